from __future__ import annotations

import os

import pytest
import torch

import geo_pix2pix
from geo_pix2pix.errors import CheckpointError
from geo_pix2pix.model.checkpoints import export_checkpoint, load_checkpoint, save_checkpoint
from geo_pix2pix.model.networks import Discriminator, Generator


@pytest.fixture
def small_pair():
    torch.manual_seed(0)
    return Generator(base_width=4, norm="instance"), Discriminator(base_width=4, norm="instance")


def test_round_trip_restores_config_weights_and_facts(tmp_path, small_pair):
    g, d = small_pair
    path = save_checkpoint(tmp_path / "m.pt", g, discriminator=d, ground_resolution=2.5,
                           provenance={"steps": 10, "data": "synthetic"})
    raw = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert raw["format"] == "geo-pix2pix-checkpoint"
    ckpt = load_checkpoint(path)
    assert ckpt.generator_config == g.config
    assert ckpt.ground_resolution == 2.5
    assert ckpt.provenance["data"] == "synthetic"
    g2 = ckpt.build_generator()
    for (k, a), (_, b) in zip(g.state_dict().items(), g2.state_dict().items(), strict=False):
        assert torch.equal(a, b), k
    assert ckpt.build_discriminator().config == d.config


def test_load_model_rebuilds_and_runs(tmp_path, small_pair):
    g, _ = small_pair
    path = save_checkpoint(tmp_path / "m.pt", g, ground_resolution=1.0)
    model = geo_pix2pix.load_model(path, device="cpu")
    assert model.ground_resolution == 1.0
    assert model.tile_multiple == 256
    assert len(model.identity) == 64
    x = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(model(x), g.eval()(x))


def test_half_export_is_smaller_and_close(tmp_path, small_pair):
    g, d = small_pair
    full = save_checkpoint(tmp_path / "full.pt", g, discriminator=d)
    slim = export_checkpoint(full, tmp_path / "slim.pt", ground_resolution=3.0)
    assert slim.stat().st_size < 0.7 * full.stat().st_size
    ckpt = load_checkpoint(slim)
    assert ckpt.ground_resolution == 3.0
    g2 = ckpt.build_generator()
    for a, b in zip(g.parameters(), g2.parameters(), strict=False):
        assert a.dtype == b.dtype == torch.float32
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


def test_int8_storage_round_trip(tmp_path, small_pair):
    """int8 storage: a quarter of float32's size, every weight within half a step of its
    channel's scale, float32 networks after loading; a calibrated copy stays int8; version 2
    only for such files, so that an older geo-pix2pix refuses them instead of misreading."""
    torch.manual_seed(1)
    g, d = Generator(base_width=16, norm="instance"), Discriminator(base_width=16, norm="instance")
    full = save_checkpoint(tmp_path / "full.pt", g, discriminator=d)
    small = export_checkpoint(full, tmp_path / "q.pt", storage="int8")
    half = export_checkpoint(full, tmp_path / "h.pt")
    assert small.stat().st_size < 0.6 * half.stat().st_size < 0.35 * full.stat().st_size
    raw = torch.load(small, weights_only=True)
    assert raw["format_version"] == 2 and torch.load(half, weights_only=True)["format_version"] == 1
    assert raw["generator"]["state_dict"]["downs.1.conv.weight"].dtype == torch.int8
    ckpt = load_checkpoint(small)
    assert ckpt.storage == "int8" and load_checkpoint(half).storage == "float16"
    for net, back in ((g, ckpt.build_generator()), (d, ckpt.build_discriminator())):
        for (k, a), b in zip(net.state_dict().items(), back.state_dict().values(), strict=True):
            assert b.dtype == torch.float32, k
            step = a.flatten(1).abs().amax(1) / 127 if a.dim() >= 2 else a.abs() * 2**-10
            err = (a - b).abs().flatten(1).amax(1) if a.dim() >= 2 else (a - b).abs()
            assert torch.all(err <= step / 2 + 1e-7), k
    again = export_checkpoint(small, tmp_path / "again.pt", int8={"ranges": {}})
    assert load_checkpoint(again).storage == "int8"
    assert torch.equal(torch.load(again, weights_only=True)["generator"]["state_dict"]["downs.1.conv.weight"],
                       raw["generator"]["state_dict"]["downs.1.conv.weight"])  # not re-quantised


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["generator"]["scales"].pop("downs.1.conv.weight"), r"'downs.1.conv.weight' has no scale"),
    (lambda r: r["generator"]["scales"].update({"downs.1.conv.weight": torch.ones(3)}), r"does not match its scales"),
    (lambda r: r["generator"]["scales"].update({"head.0.bias": torch.ones(3)}), r"'head.0.bias' does not match"),
])
def test_damaged_int8_storage_is_a_clear_error(tmp_path, small_pair, edit, match):
    path = save_checkpoint(tmp_path / "m.pt", small_pair[0], storage="int8")
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(info.value).endswith("export_checkpoint")


def test_shipped_default_model_loads():
    model = geo_pix2pix.load_model()
    assert model.ground_resolution and 0.5 < model.ground_resolution < 5
    assert model.generator.config.norm == "instance"
    assert model.checkpoint.path.endswith("default.pt")


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "not a readable"),
        (b"this is not a checkpoint at all", "not a readable"),
    ],
)
def test_garbage_files_are_clear_errors(tmp_path, content, match):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(p)


def test_truncated_file_is_a_clear_error(tmp_path, small_pair):
    path = save_checkpoint(tmp_path / "m.pt", small_pair[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(path)


def test_bare_state_dict_is_foreign(tmp_path, small_pair):
    p = tmp_path / "bare.pt"
    torch.save(small_pair[0].state_dict(), p)
    with pytest.raises(CheckpointError, match="not a geo-pix2pix checkpoint"):
        load_checkpoint(p)


def test_other_architecture_is_a_clear_error(tmp_path, small_pair):
    path = save_checkpoint(tmp_path / "m.pt", small_pair[0])
    raw = torch.load(path, weights_only=True)
    raw["generator"]["config"]["base_width"] = 8  # claims another width than its weights
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        geo_pix2pix.load_model(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_newer_format_is_refused(tmp_path, small_pair):
    path = save_checkpoint(tmp_path / "m.pt", small_pair[0])
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="upgrade"):
        load_checkpoint(path)


def _edited(tmp_path, small_pair, edit):
    path = save_checkpoint(tmp_path / "m.pt", small_pair[0], discriminator=small_pair[1], ground_resolution=2.0)
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)
    return path


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["generator"]["config"].update(base_width=100_000),
     r"downs.0.conv.weight is \[4, 3, 4, 4\] in the file, but GeneratorConfig\(.*base_width=100000.*\) needs "
     r"\[100000, 3, 4, 4\]"),
    (lambda r: r["generator"]["config"].update(num_downs=10**9),
     r"num_downs=1000000000 levels, but the file holds \d+ tensors"),
    (lambda r: r["generator"]["config"].update(in_channels=10**7), r"downs.0.conv.weight is \[4, 3, 4, 4\]"),
    (lambda r: r["discriminator"]["config"].update(base_width=10**6), r"the discriminator weights do not fit"),
    (lambda r: r["generator"]["state_dict"].update(extra=torch.zeros(1)), r"unexpected: extra"),
    (lambda r: r["generator"]["state_dict"].pop("head.0.bias"), r"missing: head.0.bias"),
    (lambda r: r["generator"]["state_dict"].update({"head.0.bias": "text"}), r"not a mapping of names to tensors"),
    (lambda r: r["generator"]["config"].update(base_width=2.5), r"cannot be built"),
])
def test_network_config_is_checked_against_the_weights_before_it_is_built(tmp_path, small_pair, edit, match):
    """A config asking for an enormous network is refused from the weights' shapes, at no cost:
    building it (terabytes here) is what used to happen first."""
    path = _edited(tmp_path, small_pair, edit)
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=match) as info:
        ckpt.build_generator()
        ckpt.build_discriminator()
    assert "\n" not in str(info.value) and str(info.value).endswith("use a checkpoint written by geo-pix2pix train")


@pytest.mark.parametrize("value", ["2.0", "abc", float("nan"), float("inf"), -1.0, 0.0, 1e-300, True, [2.0],
                                   {"m": 2}])
def test_ground_resolution_must_be_a_number(tmp_path, small_pair, value, make_raster):
    from clihelpers import assert_user_error, cli

    path = _edited(tmp_path, small_pair, lambda r: r.update(ground_resolution=value))
    with pytest.raises(CheckpointError, match="states a ground_resolution of"):
        load_checkpoint(path)
    line = assert_user_error(cli("render", make_raster(40, 40), tmp_path / "out.tif", "-w", path),
                             f"states a ground_resolution of {value!r}, which is not a number of metres per pixel")
    assert line.endswith("(torch.load, torch.save)")


def test_unreadable_reason_is_kept_whole_on_one_line(tmp_path):
    """torch's reason, e.g. a pickled function refused by weights_only, is not cut mid-sentence."""
    import os

    p = tmp_path / "pickled.pt"
    torch.save({"a": torch.zeros(2), "f": os.system}, p)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(p)
    msg = str(info.value)
    assert "\n" not in msg
    assert "Trying to load unsupported GLOBAL posix.system" in msg  # the real reason, past 160 characters
    assert msg.endswith("omit the weights to use the default model")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"\(EOFError: the file ended early\)"):
        load_checkpoint(tmp_path / "empty.pt")


def test_a_killed_writers_temporary_is_swept_by_the_next_save(tmp_path):
    """A checkpoint's temporary left by kill -9 (dead owner) goes at the next save; a live
    process's is left alone."""
    import subprocess

    from geo_pix2pix.io.atomic import temp_name

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / temp_name("m.pt").replace(f"pid{os.getpid()}", f"pid{dead.pid}")
    live = tmp_path / temp_name("m.pt")  # this process's: still being written
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"in progress")
    save_checkpoint(tmp_path / "m.pt", Generator(base_width=4))
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["m.pt"]
