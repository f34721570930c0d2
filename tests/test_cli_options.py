"""Every numeric option of every command refuses bad values in one line, before any work.

The options are found by walking the click commands, so an option added later without
a checked type fails :func:`test_every_numeric_option_is_checked`.
"""

from __future__ import annotations

import math

import click
import numpy as np
import pytest
import torch
from clihelpers import assert_user_error, cli
from test_train import make_pairs

from geo_pix2pix.cli.main import main
from geo_pix2pix.cli.options import Number
from geo_pix2pix.errors import OptionError
from geo_pix2pix.model import memory

#: what each command needs besides the option under test (none of these paths exist)
REQUIRED = {
    "render": ["SRC.tif", "DST.tif"],
    "train": ["DATA", "RUN"],
    "evaluate": ["DATA"],
    "calibrate": ["MAP.tif", "-o", "OUT.pt"],
    "export-onnx": ["DST.onnx"],
    "tiles": ["SRC", "DEST", "--zoom", "3"],
    "osm-map": ["SRC.osm.pbf", "DST.tif"],
    "serve": ["SRC"],
}


def commands(group: click.Group = main, prefix: tuple = ()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def numeric_options():
    for path, cmd in commands():
        for param in cmd.params:
            if isinstance(param.type, Number):
                yield " ".join(path), max(param.opts, key=len), param.type


def bad_values(kind: Number) -> list[str]:
    values = ["nan", "inf", "-inf", "1e400", "abc", "", "-3"]
    if kind.kind is int:
        values += ["1.5", "1e3"]
    if kind.lo is not None:
        below = kind.lo if kind.lo_open else kind.lo - (1 if kind.kind is int else kind.lo / 2 or 1e-9)
        values.append(str(below))
    if kind.hi is not None:
        values.append(str(kind.hi if kind.hi_open else kind.hi + 1))
    return values


def test_every_numeric_option_is_checked():
    """No command takes a number through click's bare INT/FLOAT (which let nan, inf, 0 through)."""
    unchecked = [(" ".join(path), p.name) for path, cmd in commands() for p in cmd.params
                 if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType))]
    assert unchecked == []
    found = {(cmd, opt) for cmd, opt, _ in numeric_options()}
    assert {("train", "--lr"), ("train", "--width"), ("train", "--d-width"), ("train", "--checkpoint-every"),
            ("render", "--batch-size"), ("tiles", "--quality"), ("osm-map", "--resolution"),
            ("serve", "--port"), ("serve", "--workers")} <= found


@pytest.mark.parametrize("command,option,kind", list(numeric_options()), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_numbers_are_one_line_errors(command, option, kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in bad_values(kind):
        result = cli(*command.split(), *REQUIRED[command.split()[-1]], option, value)
        line = assert_user_error(result, f"Error: {option} ")
        assert "must be" in line or "is not" in line, line
        assert list(tmp_path.iterdir()) == [], (value, list(tmp_path.iterdir()))  # nothing made: no RUN folder


@pytest.mark.parametrize("value,message", [
    ("nan", "--lr nan must be a finite number greater than 0; the paper uses 0.0002"),
    ("abc", "--lr 'abc' is not a number: give a finite number greater than 0"),
])
def test_number_messages_name_the_value_the_rule_and_the_fix(value, message, tmp_path):
    assert_user_error(cli("train", tmp_path / "data", tmp_path / "run", "--lr", value), message)


def test_good_numbers_pass():
    t = Number(float, 0, 1, hi_open=True)
    assert t.convert("0", None, None) == 0.0 and t.convert(0.5, None, None) == 0.5
    assert Number(int, 1).convert("12", None, None) == 12
    for bad in ("1", math.nan, True):
        with pytest.raises(OptionError):
            t.convert(bad, None, None)


# -- train: options that depend on each other, and memory -------------------------------------------
def train(data, run, *extra):
    return cli("-q", "train", data, run, "--steps", "1", "--width", "4", "--d-width", "4", "--val-fraction", "0",
               "--device", "cpu", *extra)


@pytest.mark.parametrize("extra,message", [
    (["--decay-steps", "2"], "--decay-steps 2 must be at most --steps 1"),
    (["--load-size", "300-260"], "--load-size '300-260' must be N or LOW-HIGH with LOW ≤ HIGH"),
    (["--load-size", "0"], "--load-size '0' must be N or LOW-HIGH"),
    (["--load-size", "big"], "--load-size 'big' must be N or LOW-HIGH"),
])
def test_train_option_combinations(tmp_path, extra, message):
    data = make_pairs(tmp_path / "data", n=2)
    assert_user_error(train(data, tmp_path / "run", *extra), message)
    assert not (tmp_path / "run").exists()


def test_checkpoint_every_zero_leaves_nothing_that_blocks_the_corrected_run(tmp_path):
    data = make_pairs(tmp_path / "data", n=2)
    run = tmp_path / "run"
    assert_user_error(train(data, run, "--checkpoint-every", "0"), "--checkpoint-every 0 must be at least 1")
    assert not run.exists()
    result = train(data, run, "--checkpoint-every", "1")
    assert result.exit_code == 0, result.output
    assert (run / "model.pt").exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--batch-size", "100000"], "--batch-size 100000 --load-size 286 needs at least"),
    (["--width", "100000"], "training with --width 100000 --d-width 4"),
    (["--load-size", "100000"], "--load-size 100000 needs at least"),
])
def test_train_too_large_for_memory_is_refused_with_the_numbers(tmp_path, monkeypatch, extra, fragment):
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 8 << 30)
    data = make_pairs(tmp_path / "data", n=2)
    line = assert_user_error(train(data, tmp_path / "run", *extra), fragment)
    assert "of memory, but 8.0 GiB is available: lower --batch-size" in line
    assert not (tmp_path / "run").exists()


def test_render_batch_too_large_for_memory(make_raster, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 8 << 30)
    src = make_raster(64, 64)
    line = assert_user_error(cli("render", src, tmp_path / "out.tif", "--batch-size", "100000"),
                             "--batch-size 100000 needs at least 164.8 GiB of memory, but 8.0 GiB is available")
    assert "give a smaller --batch-size (the default is 8" in line
    assert cli("-q", "render", src, tmp_path / "out.tif", "--batch-size", "64").exit_code == 0


def test_available_memory_without_psutil(monkeypatch):
    import sys

    with_psutil = memory.available_memory()
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    without = memory.available_memory()
    assert without is not None and without > 0
    if with_psutil is not None:
        assert abs(without - with_psutil) < 0.5 * with_psutil  # /proc/meminfo's MemAvailable, the same figure
    assert memory.format_bytes(1536) == "1.5 KiB" and memory.format_bytes(3 << 40) == "3.0 TiB"


def test_train_memory_estimate_grows_with_the_batch_and_the_widths():
    from geo_pix2pix.model.networks import Discriminator, Generator

    def need(width, batch):
        g = memory.meta_module(lambda: Generator(base_width=width, norm="instance"))
        d = memory.meta_module(lambda: Discriminator(base_width=width, norm="instance"))
        assert all(p.is_meta for p in g.parameters())  # nothing allocated
        return memory.train_bytes(g, d, batch, 256, 286)

    small = need(4, 1)
    assert need(4, 2) > small and need(8, 1) > small
    # the paper's networks: 57 M parameters, 16 bytes each, at the least
    assert need(64, 1) > 57e6 * 16
    assert np.isfinite(need(64, 1)) and torch.get_default_device().type == "cpu"


def test_render_from_python_checks_the_batch_against_memory(make_raster, tmp_path, monkeypatch):
    from geo_pix2pix import render
    from geo_pix2pix.errors import OptionError

    monkeypatch.setattr(memory, "available_memory", lambda device=None: 8 << 30)
    with pytest.raises(OptionError, match="--batch-size 100000 needs at least 164.8 GiB of memory"):
        render(make_raster(64, 64), tmp_path / "out.tif", batch_size=100_000)
    assert not (tmp_path / "out.tif").exists()
