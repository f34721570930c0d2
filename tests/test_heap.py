"""kept_heap: malloc settings changed once, restored when the last user leaves."""

from __future__ import annotations

import threading

import numpy as np

from geo_pix2pix import heap


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


def test_nested_and_concurrent_uses_share_one_setting(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_LIBC", fake)
    inside = threading.Event()
    release = threading.Event()

    def other_user():
        with heap.kept_heap():
            inside.set()
            release.wait(5)

    with heap.kept_heap():
        with heap.kept_heap():
            t = threading.Thread(target=other_user)
            t.start()
            assert inside.wait(5)
        assert len(fake.calls) == 2  # set once, nothing restored while users remain
        release.set()
        t.join(5)
        assert len(fake.calls) == 2
    assert fake.calls == [
        ("mallopt", heap._M_MMAP_MAX, 0), ("mallopt", heap._M_TRIM_THRESHOLD, 1 << 30),
        *[("mallopt", k, v) for k, v in heap._left.items()], ("trim", 0),
    ]
    assert heap._users == 0


def test_restored_after_an_error(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_LIBC", fake)
    try:
        with heap.kept_heap():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert fake.calls[-1] == ("trim", 0) and heap._users == 0


def test_real_allocator_still_works():
    """With this machine's libc (glibc on Linux, or nothing elsewhere): large blocks
    are allocated, written, freed and allocated again inside and after the block."""
    with heap.kept_heap():
        for _ in range(3):
            a = np.ones(40 * 1024 * 1024 // 8)  # 40 MB, above glibc's largest mmap threshold
            assert a.sum() == a.size
            del a
    b = np.ones(1024 * 1024)
    assert b.sum() == b.size


def test_keep_for_process_is_never_released(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_LIBC", fake)
    monkeypatch.setattr(heap, "_users", 0)
    heap.keep_heap_for_process()
    with heap.kept_heap():
        pass
    assert fake.calls == [("mallopt", heap._M_MMAP_MAX, 0), ("mallopt", heap._M_TRIM_THRESHOLD, 1 << 30)]
    assert heap._users == 1


def test_thresholds_set_for_the_process_are_what_leaving_restores(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_LIBC", fake)
    monkeypatch.setattr(heap, "_left", dict(heap._left))
    with heap.kept_heap():
        assert heap.set_process_thresholds(32 << 20, 256 << 20)  # e.g. a Dask worker, mid-render
        assert len(fake.calls) == 2  # applied on leaving, not under the running render
    assert ("mallopt", heap._M_MMAP_THRESHOLD, 32 << 20) in fake.calls[2:]
    assert ("mallopt", heap._M_TRIM_THRESHOLD, 256 << 20) in fake.calls[2:]
