"""Reliability of ``render`` and ``train`` (issue 6): bad input, interruptions, full disks.

Every user error is one line (``Error: …``), exit code 1, no traceback unless ``-v``,
and leaves no partial, corrupted or overwritten output. Messages and exit codes are
checked through click's runner; signals and file-size limits run the real command in a
subprocess (``python -m geo_pix2pix``). ``docs/reliability.md`` lists each case with
the test that checks it (several are checked in test_render, test_cli, test_checkpoints
and test_train already, and not repeated here).
"""

from __future__ import annotations

import importlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from clihelpers import assert_user_error, cli, message_lines
from PIL import Image
from test_train import make_pairs

from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.networks import Discriminator, Generator

ROOT = Path(__file__).resolve().parent.parent
#: Subprocesses run on one thread: this machine's cores are shared.
ENV = dict(os.environ, OMP_NUM_THREADS="1")








def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, hidden ones included: nothing may appear or change."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    # At the test rasters' ground resolution (make_raster: about 1 m), so that nothing is
    # resampled and no ResolutionWarning joins the one line a test expects.
    return save_checkpoint(tmp_path / "weights" / "tiny.pt", Generator(base_width=4, norm="instance"),
                           ground_resolution=1.0)


# -- render: inputs it refuses ---------------------------------------------------------------
def _truncated(tmp_path, make_raster):
    whole = make_raster(600, 600, name="whole.tif", tiled=True, blockxsize=256, blockysize=256)
    data = whole.read_bytes()
    whole.unlink()
    path = tmp_path / "truncated.tif"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text(tmp_path, make_raster):
    path = tmp_path / "notes.tif"
    path.write_text("this is not a raster\n")
    return path


def _empty(tmp_path, make_raster):
    path = tmp_path / "empty.tif"
    path.touch()
    return path


def _folder(tmp_path, make_raster):
    (tmp_path / "folder.tif").mkdir()
    return tmp_path / "folder.tif"


def _floats(values):
    def make(tmp_path, make_raster):
        return make_raster(40, 40, dtype="float32", data=values(np.random.default_rng(0)))
    return make


def _all_nan(rng):
    return np.full((3, 40, 40), np.nan, np.float32)


def _some_nan(rng):
    data = rng.uniform(-3.5, 812.0, (3, 40, 40)).astype(np.float32)
    data[:, :10] = np.nan
    return data


BAD_INPUTS = {
    "missing": (lambda tmp, mk: tmp / "nope.tif", "does not exist: check the path"),
    "directory": (_folder, "is a directory: give a raster file"),
    "text-file-named-tif": (_text, "is not a raster GDAL can read"),
    "zero-size-file": (_empty, "is an empty file (0 bytes)"),
    "truncated-geotiff": (_truncated, "the file is truncated or corrupt; re-export or re-download it"),
    "2-bands": (lambda tmp, mk: mk(40, 40, count=2), "choose the red, green and blue bands with --bands R,G,B"),
    "5-bands": (lambda tmp, mk: mk(40, 40, count=5), "choose the red, green and blue bands with --bands R,G,B"),
    "16-bit": (lambda tmp, mk: mk(40, 40, dtype="uint16"),
               "is uint16 (values 0 to 255), but the model takes 8-bit map renderings"),
    "float": (_floats(lambda rng: rng.uniform(-3.5, 812.0, (3, 40, 40)).astype(np.float32)),
              "gdal_translate -ot Byte -scale"),
    "float-with-nan": (_floats(_some_nan), "with NaN pixels (other values"),
    "nan-filled": (_floats(_all_nan), "every sampled pixel is NaN: there is nothing to render"),
    "rotated-geotransform": (lambda tmp, mk: mk(40, 40, transform=Affine(2, 0.5, 2_777_000, 0.3, -2, 8_438_000)),
                             "rotated or sheared geotransform"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_render_refuses_unusable_input_in_one_line(case, make_raster, tmp_path, weights):
    build, fragment = BAD_INPUTS[case]
    src = build(tmp_path, make_raster)
    before = snapshot(tmp_path)
    line = assert_user_error(cli("render", src, tmp_path / "out.tif", "--weights", weights), fragment)
    assert str(src) in line  # the value
    assert snapshot(tmp_path) == before  # no output, no temporary file, input untouched


def test_float_message_gives_the_range_to_scale(make_raster, tmp_path, weights):
    data = np.linspace(-2.5, 1000.0, 3 * 40 * 40, dtype=np.float32).reshape(3, 40, 40)
    line = assert_user_error(cli("render", make_raster(40, 40, dtype="float32", data=data),
                                 tmp_path / "out.tif", "--weights", weights), "float32")
    assert "values -2.5 to 1000" in line and "-scale -2.5 1000 0 255" in line


def test_five_bands_render_once_bands_are_chosen(make_raster, tmp_path, weights):
    src = make_raster(40, 40, count=5)
    result = cli("render", src, tmp_path / "out.tif", "--weights", weights, "--bands", "3,2,1")
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 3 and out.shape == (40, 40)


def test_no_crs_warns_and_keeps_the_transform(make_raster, tmp_path, weights):
    transform = Affine(2.0, 0, 1000.0, 0, -2.0, 5000.0)
    src = make_raster(40, 50, crs=None, transform=transform)
    dst = tmp_path / "out.tif"
    result = cli("render", src, dst, "--weights", weights)
    assert result.exit_code == 0, result.output
    warnings = [s for s in message_lines(result.output) if s.startswith("Warning:")]
    assert len(warnings) == 1 and "has a transform but no CRS" in warnings[0]
    with rasterio.open(dst) as out:
        assert out.crs is None and out.transform == transform and out.shape == (40, 50)


# -- render: outputs it refuses -----------------------------------------------------------------
BAD_OUTPUTS = {
    "output-is-input": (lambda tmp, src: src, "is the input file: choose another output path"),
    "output-folder-missing": (lambda tmp, src: tmp / "missing" / "out.tif", "does not exist: create it first"),
    "output-is-a-folder": (lambda tmp, src: tmp / "weights", "is a directory: give a file name"),
    "output-format-unknown": (lambda tmp, src: tmp / "out.xyz", "unknown format '.xyz'"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_render_refuses_unusable_output_in_one_line(case, make_raster, tmp_path, weights):
    src = make_raster(40, 40)
    build, fragment = BAD_OUTPUTS[case]
    before = snapshot(tmp_path)
    for extra in ((), ("--overwrite",)):  # --overwrite does not make these writable
        assert_user_error(cli("render", src, build(tmp_path, src), "--weights", weights, *extra), fragment)
    assert snapshot(tmp_path) == before


def _in_read_only_mount(folder: Path, *command: str) -> subprocess.CompletedProcess:
    """Run ``command`` with ``folder`` bind-mounted read-only, in a private mount namespace."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(folder), *command],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)


def test_render_refuses_a_folder_it_cannot_write(make_raster, tmp_path, weights):
    src = make_raster(40, 40)
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            assert_user_error(cli("render", src, folder / "out.tif", "--weights", weights), "is not writable")
        finally:
            folder.chmod(0o755)
        assert not any(folder.iterdir())
        return
    # root writes through permission bits: only a read-only mount stops it.
    if shutil.which("unshare") is None or _in_read_only_mount(folder, "true").returncode != 0:
        pytest.skip("running as root, which ignores permission bits, and no read-only bind mount "
                    "can be made here (needs unshare and CAP_SYS_ADMIN)")
    p = _in_read_only_mount(folder, sys.executable, "-m", "geo_pix2pix", "-q", "render", str(src),
                            str(folder / "out.tif"), "--weights", str(weights))
    assert p.returncode == 1, p.stderr
    assert message_lines(p.stderr) == [f"Error: output folder {str(folder)!r} is not writable: "
                                       "choose another output path"]
    assert not any(folder.iterdir())


# -- render: weights ----------------------------------------------------------------------------
def _corrupt(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_architecture(path: Path) -> None:
    raw = torch.load(path, weights_only=True)
    raw["generator"]["config"]["base_width"] = 8  # says 8, holds width-4 weights
    torch.save(raw, path)


def _bare_state_dict(path: Path) -> None:
    torch.save(Generator(base_width=4, norm="instance").state_dict(), path)


BAD_WEIGHTS = {
    "corrupt": (_corrupt, "is not a readable geo-pix2pix checkpoint"),
    "truncated": (_truncate, "the file is corrupt, truncated or not a PyTorch file"),
    "other-architecture": (_other_architecture, "the generator weights do not fit the network"),
    "not-a-checkpoint": (_bare_state_dict, "is a PyTorch file but not a geo-pix2pix checkpoint"),
    "missing": (lambda path: path.unlink(), "does not exist: check the path"),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_render_refuses_unusable_weights_in_one_line(case, make_raster, tmp_path, weights):
    spoil, fragment = BAD_WEIGHTS[case]
    spoil(weights)
    src = make_raster(40, 40)
    before = snapshot(tmp_path)
    line = assert_user_error(cli("render", src, tmp_path / "out.tif", "--weights", weights), fragment)
    assert str(weights) in line
    assert snapshot(tmp_path) == before


# -- tracebacks: with -v, and for bugs ----------------------------------------------------------
def test_verbose_shows_the_traceback_of_a_user_error(tmp_path):
    from geo_pix2pix.errors import InputRasterError

    quiet = cli("render", tmp_path / "nope.tif", tmp_path / "out.tif")
    assert "Traceback" not in quiet.output and isinstance(quiet.exception, SystemExit)
    verbose = cli("-v", "render", tmp_path / "nope.tif", tmp_path / "out.tif")
    assert isinstance(verbose.exception, InputRasterError)  # re-raised: Python prints the traceback


def test_a_bug_is_not_disguised_as_a_user_error(make_raster, tmp_path, weights, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(importlib.import_module("geo_pix2pix.render"), "render", broken)
    result = cli("render", make_raster(40, 40), tmp_path / "out.tif", "--weights", weights)
    assert isinstance(result.exception, ZeroDivisionError)  # not "Error: …": the traceback shows


# -- render: a disk that fills up, and signals (real processes) ----------------------------------
def render_command(src, dst, weights, *extra) -> list[str]:
    return [sys.executable, "-m", "geo_pix2pix", "-q", "render", str(src), str(dst), "--weights", str(weights),
            "--device", "cpu", *extra]


def _file_size_limit(limit: int):
    # CPython ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk.
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_disk_filling_up_leaves_the_destination_as_it_was(make_raster, tmp_path, weights):
    src = make_raster(700, 600, seed=3)
    full = tmp_path / "full.tif"
    subprocess.run(render_command(src, full, weights), check=True, env=ENV, cwd=ROOT, capture_output=True)
    complete = full.read_bytes()
    dst = tmp_path / "out.tif"
    dst.write_bytes(b"the previous output")
    failed = 0
    # Cut while rendering, while closing, and while writing the overviews: GDAL then only
    # logs the failure and leaves a file without overviews, which used to be renamed into place.
    for limit in (int(0.3 * len(complete)), int(0.95 * len(complete)), len(complete) - 1000):
        p = subprocess.run(render_command(src, dst, weights, "--overwrite"), env=ENV, cwd=ROOT, capture_output=True,
                           text=True, preexec_fn=_file_size_limit(limit))
        assert {q.name for q in tmp_path.iterdir()} == {src.name, "full.tif", "out.tif", "weights"}
        if p.returncode == 0:  # the limit was not reached: the output is whole
            assert dst.read_bytes() == complete
            dst.write_bytes(b"the previous output")
            continue
        failed += 1
        assert p.returncode == 1, p.stderr
        assert dst.read_bytes() == b"the previous output"
        # libtiff may print its own "_tiffWriteProc: File too large." first; ours is one line
        ours = [s for s in message_lines(p.stderr) if not s.startswith("_tiff")]
        assert len(ours) == 1 and ours[0].startswith(f"Error: could not write {str(dst)!r}"), p.stderr
        assert "file-size limit (ulimit -f)" in ours[0] and "was left as it was" in ours[0]
    assert failed == 3


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "Interrupted"),
                                           (signal.SIGTERM, 143, "Terminated")])
def test_signal_stops_render_promptly_and_keeps_the_previous_output(make_raster, tmp_path, sig, code, word):
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "slow.pt", Generator(base_width=8, norm="instance"), ground_resolution=1.0)
    dst = tmp_path / "out.tif"
    subprocess.run(render_command(make_raster(300, 300, seed=1), dst, weights), check=True, env=ENV, cwd=ROOT,
                   capture_output=True)  # the previous output
    before = dst.read_bytes()
    src = make_raster(1536, 1536, tiled=True, blockxsize=256, blockysize=256)  # a few seconds of work
    proc = subprocess.Popen(render_command(src, dst, weights, "--overwrite"), env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.tif.*.tmp*")):  # rendering has begun
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(sig)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert took < 10, took
    assert message_lines(err) == [f"{word}: temporary files removed, existing outputs left untouched."]
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    assert dst.read_bytes() == before


# -- train ----------------------------------------------------------------------------------------
def train_cli(data, out, *extra):
    return cli("-q", "train", data, out, "--steps", "1", "--width", "4", "--d-width", "4", "--val-fraction", "0",
               "--device", "cpu", *extra)


def _two_folders(tmp):
    return make_pairs(tmp / "data", n=2, side_by_side=False)


def _unpaired(tmp):
    data = _two_folders(tmp)
    (data / "aerial" / "t0.png").rename(data / "aerial" / "other.png")
    return data


def _sizes_differ(tmp):
    data = _two_folders(tmp)
    Image.new("RGB", (300, 300)).save(data / "aerial" / "t1.png")
    return data


def _odd_width(tmp):
    data = make_pairs(tmp / "data", n=2)
    Image.new("RGB", (513, 256)).save(data / "odd.png")
    return data


def _small_tile(tmp):
    data = make_pairs(tmp / "data", n=2)
    Image.new("RGB", (400, 200)).save(data / "small.png")  # halves of 200×200
    return data


def _unreadable(tmp):
    data = make_pairs(tmp / "data", n=2)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return data


def _empty_folder(tmp):
    (tmp / "data").mkdir()
    return tmp / "data"


BAD_DATASETS = {
    "empty-folder": (_empty_folder, (), "holds no images"),
    "missing-folder": (lambda tmp: tmp / "data", (), "does not exist or is not a folder: check the path"),
    "folders-layout-on-side-by-side-data": (lambda tmp: make_pairs(tmp / "data", n=2), ("--layout", "folders"),
                                            "map' does not exist"),
    "side-by-side-layout-on-folders-data": (_two_folders, (), "it has map/ and aerial/ folders: pass --layout folders"),
    "unpaired-names": (_unpaired, ("--layout", "folders"), "unpaired tiles: 1 map tile(s) without an aerial"),
    "map-and-aerial-sizes-differ": (_sizes_differ, ("--layout", "folders"), "paired tiles must have the same size"),
    "odd-width-pair": (_odd_width, (), "a side-by-side pair must have an even width"),
    "image-smaller-than-crop": (_small_tile, (), "small.png' is 200×200 px, smaller than the 256 px training crop"),
    "unreadable-image": (_unreadable, (), "broken.png' is not a readable image"),
    "load-size-below-crop": (lambda tmp: make_pairs(tmp / "data", n=2), ("--load-size", "200"),
                             "--load-size 200 is smaller than the 256 px training crop"),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_train_refuses_unusable_data_before_training(case, tmp_path):
    build, extra, fragment = BAD_DATASETS[case]
    data = build(tmp_path)
    before = snapshot(tmp_path)
    assert_user_error(train_cli(data, tmp_path / "run", *extra), fragment)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def _checkpoint(path: Path, width: int = 4, discriminator: bool = True) -> Path:
    torch.manual_seed(0)
    d = Discriminator(base_width=4, norm="instance") if discriminator else None
    return save_checkpoint(path, Generator(base_width=width, norm="instance"), discriminator=d)


BAD_RESUMES = {
    "missing": (lambda ck: ck.parent / "missing.pt", "does not exist: check the path"),
    "foreign": (lambda ck: (torch.save({"state": torch.zeros(2)}, ck), ck)[1], "not a geo-pix2pix checkpoint"),
    "other-width": (lambda ck: _checkpoint(ck, width=8), "pass the same --width/--norm/--upsample or start a new run"),
    "no-discriminator": (lambda ck: _checkpoint(ck, discriminator=False), "has no discriminator matching"),
    "truncated": (lambda ck: (_truncate(_checkpoint(ck)), ck)[1], "corrupt, truncated"),
}


@pytest.mark.parametrize("case", list(BAD_RESUMES))
def test_train_refuses_an_unusable_resume_checkpoint(case, tmp_path):
    data = make_pairs(tmp_path / "data", n=2)
    (tmp_path / "ckpt").mkdir()
    make, fragment = BAD_RESUMES[case]
    resume = make(tmp_path / "ckpt" / "other.pt")
    before = snapshot(tmp_path)
    assert_user_error(train_cli(data, tmp_path / "run", "--resume", resume), fragment)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_train_refuses_to_overwrite_another_run_and_resumes_it(tmp_path):
    data = make_pairs(tmp_path / "data", n=2)
    run = tmp_path / "run"
    _checkpoint(run / "last.pt")
    before = snapshot(run)
    assert_user_error(train_cli(data, run), f"holds another training run ({run / 'last.pt'}): pass --resume")
    assert_user_error(train_cli(data, run, "--resume", _checkpoint(tmp_path / "elsewhere.pt")),
                      "holds another training run")
    assert snapshot(run) == before
    result = train_cli(data, run, "--resume", run / "last.pt")  # the fix the message gives
    assert result.exit_code == 0, result.output
    assert (run / "model.pt").exists()
