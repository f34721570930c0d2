from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from geo_pix2pix.errors import CheckpointError, DatasetError
from geo_pix2pix.model.checkpoints import load_checkpoint
from geo_pix2pix.model.networks import DiscriminatorConfig, GeneratorConfig
from geo_pix2pix.train.data import Jitter, JitteredPairs, PairSource, SideBySideFolder, TwoFolders, split_names
from geo_pix2pix.train.trainer import TrainConfig, Trainer

TINY_G = GeneratorConfig(base_width=4, norm="instance")
TINY_D = DiscriminatorConfig(base_width=4, norm="instance")


def make_pairs(folder, n=6, size=256, side_by_side=True):
    """Synthetic pairs: the 'aerial' is a darker, noisier copy of the 'map' (tiles of at least
    the 256 px crop: smaller ones are refused)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = np.kron(rng.integers(0, 256, (size // 8, size // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        a = (m * 0.6 + rng.integers(0, 40, m.shape)).astype(np.uint8)
        if side_by_side:
            Image.fromarray(np.concatenate([a, m], axis=1)).save(folder / f"{i}.png")
        else:
            (folder / "map").mkdir(exist_ok=True)
            (folder / "aerial").mkdir(exist_ok=True)
            Image.fromarray(m).save(folder / "map" / f"t{i}.png")
            Image.fromarray(a).save(folder / "aerial" / f"t{i}.png")
    return folder


def config(**kw):
    base = dict(steps=4, batch_size=2, load_size=(272, 288), crop_size=256, val_fraction=0.0,
                checkpoint_every=1000, sample_every=0, log_every=2, val_every=0)
    base.update(kw)
    return TrainConfig(**base)


def test_side_by_side_direction(tmp_path):
    make_pairs(tmp_path / "d", n=2)
    src = SideBySideFolder(tmp_path / "d", "BtoA")
    m, a = src[0]
    assert m.shape == a.shape == (256, 256, 3)
    assert m.mean() > a.mean()  # the map (right half) is the brighter one
    m2, a2 = SideBySideFolder(tmp_path / "d", "AtoB")[0]
    assert np.array_equal(m2, a) and np.array_equal(a2, m)


def test_train_writes_checkpoints_metrics_and_resumes_exactly(tmp_path):
    data = make_pairs(tmp_path / "d")
    src = SideBySideFolder(data)

    straight = Trainer(src, tmp_path / "a", config(steps=4), TINY_G, TINY_D)
    straight.fit()

    first = Trainer(src, tmp_path / "b", config(steps=2), TINY_G, TINY_D)
    first.fit()
    second = Trainer(src, tmp_path / "b", config(steps=4), TINY_G, TINY_D)
    second.resume(tmp_path / "b" / "last.pt")
    assert second.state.step == 2
    second.fit()

    for (k, x), (_, y) in zip(straight.G.state_dict().items(), second.G.state_dict().items(), strict=False):
        assert torch.equal(x, y), k
    final = load_checkpoint(tmp_path / "b" / "model.pt")
    assert final.training is None and final.provenance["steps"] == 4
    lines = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    assert {"loss_d", "loss_g_gan", "loss_g_l1", "steps_per_s"} <= lines[0].keys()


def test_resume_uses_this_machines_adam_kernel(tmp_path):
    """A checkpoint whose optimiser groups say fused=None (written before fused Adam)
    resumes with the fused kernel where this PyTorch has it, its steps on the device."""
    data = make_pairs(tmp_path / "d")
    src = SideBySideFolder(data)
    first = Trainer(src, tmp_path / "a", config(steps=1), TINY_G, TINY_D)
    first.fit()
    ckpt = torch.load(tmp_path / "a" / "last.pt", map_location="cpu", weights_only=False)
    for key in ("optimizer_g", "optimizer_d"):
        for g in ckpt["training"][key]["param_groups"]:
            g["fused"] = None
    torch.save(ckpt, tmp_path / "old.pt")
    second = Trainer(src, tmp_path / "b", config(steps=2), TINY_G, TINY_D)
    second.resume(tmp_path / "old.pt")
    want = second._fused_adam
    assert want is not None  # CPU, torch >= 2.4
    for opt in (second.opt_g, second.opt_d):
        assert all(g["fused"] is want for g in opt.param_groups)
        for p, st in opt.state.items():
            assert st["step"].device == p.device
    second.fit()
    assert second.state.step == 2


def test_two_folders_samples_and_validation(tmp_path):
    data = make_pairs(tmp_path / "d", n=8, side_by_side=False)
    src = TwoFolders(data / "map", data / "aerial")
    t = Trainer(src, tmp_path / "run", config(steps=2, val_fraction=0.5, val_every=2, sample_every=2),
                TINY_G, TINY_D)
    assert t.val_idx and t.train_idx
    t.fit()
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= rec["val_l1"] <= 1
    grid = Image.open(next((tmp_path / "run" / "samples").glob("*.png")))
    assert grid.size == (3 * 256, 256 * min(4, len(t.val_idx)))


def test_learning_rate_decays_linearly():
    t = Trainer.__new__(Trainer)
    t.config = TrainConfig(steps=100, decay_steps=50, lr=2e-4)
    assert t.lr_at(0) == t.lr_at(49) == 2e-4
    assert t.lr_at(75) == pytest.approx(1e-4)
    assert t.lr_at(100) == 0


def test_split_is_stable_and_disjoint():
    names = [f"{i}.jpg" for i in range(1000)]
    tr, va = split_names(names, 0.1)
    assert not set(tr) & set(va) and len(tr) + len(va) == 1000
    assert 60 < len(va) < 140
    tr2, va2 = split_names(list(reversed(names)), 0.1)
    assert sorted(names[i] for i in va) == sorted(list(reversed(names))[i] for i in va2)


def test_dataset_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        SideBySideFolder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        SideBySideFolder(tmp_path / "missing")
    data = make_pairs(tmp_path / "d", n=3, side_by_side=False)
    (data / "aerial" / "t0.png").rename(data / "aerial" / "other.png")
    with pytest.raises(DatasetError, match="unpaired"):
        TwoFolders(data / "map", data / "aerial")


def test_a_source_that_cannot_tell_sizes_is_checked_as_it_is_sampled():
    class Unsized(PairSource):
        names = ["small"]

        def _load(self, index):
            return np.zeros((200, 200, 3), np.uint8), np.zeros((200, 200, 3), np.uint8)

    pairs = JitteredPairs(Unsized(), [0], Jitter())
    assert not pairs.sized
    with pytest.raises(DatasetError, match="'small' is 200×200 px, smaller than the 256 px training crop"):
        pairs.sample(1)


def test_resume_from_foreign_or_mismatched_checkpoint(tmp_path):
    data = make_pairs(tmp_path / "d")
    src = SideBySideFolder(data)
    t = Trainer(src, tmp_path / "a", config(steps=1), TINY_G, TINY_D)
    t.fit()
    other = Trainer(src, tmp_path / "b", config(steps=1), GeneratorConfig(base_width=8, norm="instance"), TINY_D)
    with pytest.raises(CheckpointError, match="same --width"):
        other.resume(tmp_path / "a" / "last.pt")
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("nope")
    with pytest.raises(CheckpointError):
        t.resume(bogus)
    with pytest.raises(CheckpointError, match="does not exist"):
        t.resume(tmp_path / "missing.pt")


@pytest.mark.parametrize("native,amp", [(True, True), (False, True), (True, False)])
def test_mixed_precision_on_the_cpu_only_where_bfloat16_is_native(tmp_path, monkeypatch, native, amp):
    """bfloat16 autocast on a CPU that multiplies it in hardware (faked here, so the test
    runs on any CPU), float32 elsewhere or with amp off; weights, gradients and Adam stay
    float32 either way, and the provenance says which it was."""
    monkeypatch.setattr("geo_pix2pix.model.devices.cpu_has_native_bf16", lambda: native)
    src = SideBySideFolder(make_pairs(tmp_path / "d", n=2))
    tr = Trainer(src, tmp_path / "a", config(steps=1, amp=amp), TINY_G, TINY_D)
    mixed = native and amp
    assert tr.amp_dtype == (torch.bfloat16 if mixed else None)
    assert not tr.scaler.is_enabled()  # bfloat16 needs no loss scaling
    seen = []
    conv = next(m for m in tr.G.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = tr.step()
    handle.remove()
    assert seen == [torch.bfloat16 if mixed else torch.float32]
    assert all(np.isfinite(v) for v in losses.values())
    for p in [*tr.G.parameters(), *tr.D.parameters()]:
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
    assert tr.provenance_now()["precision"] == ("bfloat16 mixed" if mixed else "float32")


def test_bfloat16_autocast_computes_what_float32_does(monkeypatch):
    """The mixed-precision forward pass is the float32 one to bfloat16's precision."""
    from geo_pix2pix.model.devices import autocast
    from geo_pix2pix.model.networks import Generator

    monkeypatch.setattr("geo_pix2pix.model.devices.cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(base_width=8, norm="instance")).eval()
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        want = g(x)
        with autocast(torch.device("cpu"), cpu_bf16=True):
            got = g(x)
    assert got.dtype == torch.bfloat16
    diff = (got.float() - want).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1


def test_autocast_precision_per_device(monkeypatch):
    from geo_pix2pix.model.devices import autocast_dtype

    monkeypatch.setattr("geo_pix2pix.model.devices.cpu_has_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert autocast_dtype(torch.device("cuda")) is torch.float16
    assert autocast_dtype(torch.device("cuda"), enabled=False) is None
    assert autocast_dtype(cpu) is None  # inference: a render's pixels do not depend on the CPU
    assert autocast_dtype(cpu, cpu_bf16=True) is torch.bfloat16
    assert autocast_dtype(torch.device("mps"), cpu_bf16=True) is None
    monkeypatch.setattr("geo_pix2pix.model.devices.cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(cpu, cpu_bf16=True) is None
