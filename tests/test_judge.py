"""The structure score's judge: it learns to segment real aerials, it scores a perfect and
a blank generator as such, it is deterministic and cached, and the CLI reports it. On a
synthetic world made in code: maps drawn in the source's palette, aerials that colour
each map class and add noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from geo_pix2pix.cli.main import main
from geo_pix2pix.errors import OutputPathError
from geo_pix2pix.evaluate import judge as judging
from geo_pix2pix.evaluate.evaluation import evaluate, format_table
from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.networks import Generator
from geo_pix2pix.train.data import SideBySideFolder
from geo_pix2pix.train.regions import CLASSES, map_classes

#: Map colours of the source's palette, by class: other (background), road, water, green.
MAP_COLOURS = np.array([(232, 232, 216), (250, 250, 250), (184, 216, 248), (200, 216, 168)], np.uint8)
#: The aerial equals the map plus noise, so that the identity is a perfect generator.
TINY = judging.JudgeRecipe(size=32, widths=(8, 16), steps=120, batch_size=8, lr=1e-2)


def world_pair(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Map: background with water and green blocks and two roads; aerial: map + noise."""
    labels = np.zeros((size, size), np.uint8)
    for cls in (2, 3, 2, 3):
        y, x = rng.integers(0, size - 8, 2)
        h, w = rng.integers(size // 6, size // 2, 2)
        labels[y : y + h, x : x + w] = cls
    r, c = rng.integers(4, size - 8, 2)
    labels[r : r + 6, :] = 1
    labels[:, c : c + 6] = 1
    map_ = MAP_COLOURS[labels]
    aerial = np.clip(map_ + rng.normal(0, 10, map_.shape), 0, 255).astype(np.uint8)
    return map_, aerial


@pytest.fixture
def world(tmp_path):
    """Factory: a side-by-side folder (aerial | map) of the synthetic world."""

    def factory(n=32, seed=0, name="world"):
        rng = np.random.default_rng(seed)
        folder = tmp_path / name
        folder.mkdir()
        for i in range(n):
            m, a = world_pair(rng)
            Image.fromarray(np.concatenate([a, m], axis=1)).save(folder / f"{i}.png")
        return folder

    return factory


class Blank(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)  # uniform grey


def test_world_maps_read_as_the_four_classes():
    m, _ = world_pair(np.random.default_rng(0))
    assert set(np.unique(map_classes(m))) == set(range(len(CLASSES)))


def test_confusion_iou_on_a_known_case():
    c = judging.Confusion()
    truth = np.array([[0, 0, 1, 1]])
    c.add(np.array([[0, 1, 1, 1]]), truth)
    assert c.iou()[:2] == pytest.approx([1 / 2, 2 / 3])
    assert np.isnan(c.iou()[2:]).all()  # neither true nor predicted
    assert c.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    c.add(np.array([[2]]), np.array([[0]]))  # water predicted where there is none
    assert c.iou()[2] == 0 and c.miou() == pytest.approx((1 / 3 + 2 / 3) / 2)  # absent from the truth: not averaged


@pytest.mark.slow
def test_judge_learns_to_segment_real_aerials_deterministically():
    rng = np.random.default_rng(1)
    pairs = [world_pair(rng) for _ in range(40)]
    images = np.stack([judging.judge_image(a, TINY.size) for _, a in pairs])
    labels = np.stack([judging.judge_labels(m, TINY.size) for m, _ in pairs])
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    net = judging.train_judge(images[:32], labels[:32], TINY)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng_state)
    c = judging.Confusion()
    c.add(judging.segment(net, images[32:]), labels[32:])
    assert c.present().all() and c.miou() > 0.8, c.iou()
    again = judging.train_judge(images[:32], labels[:32], TINY)
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_judge_net_shapes():
    net = judging.JudgeNet((8, 16, 32)).eval()
    out = net(torch.randn(2, 3, 40, 40))
    assert out.shape == (2, len(CLASSES), 40, 40) and torch.isfinite(out).all()
    assert 100_000 < sum(p.numel() for p in judging.JudgeNet().parameters()) < 1_000_000


def _evaluate(source, model, cache, **kw):
    return evaluate(source, model, split="val", val_fraction=0.25, split_by="hash", overlap=0, grid_tiles=0,
                    judge_recipe=TINY, judge_cache=cache, **kw)


@pytest.mark.slow
def test_structure_ratio_of_perfect_and_blank_generators_and_the_cache(world, tmp_path, monkeypatch):
    source = SideBySideFolder(world(), direction="BtoA")
    cache = tmp_path / "judges"
    perfect = _evaluate(source, torch.nn.Identity(), cache)
    st = perfect.structure
    assert st.trained and st.judge.parent == cache and st.judge.exists() and st.train_tiles == perfect.train_tiles
    assert st.real_miou > 0.8 and set(st.real_class_iou) == set(CLASSES)
    s = perfect.scores["model"]
    assert s.structure_ratio == pytest.approx(1.0, abs=0.06) and s.road_iou == pytest.approx(st.real_road_iou, abs=0.1)
    assert perfect.scores["palette_lookup"].structure_ratio > 0.9  # flat class colours show the classes
    assert "struct" in format_table(perfect) and "trained now" in format_table(perfect)

    def no_training(*a, **k):
        raise AssertionError("the cached judge should have been used")

    monkeypatch.setattr(judging, "train_judge", no_training)
    blank = _evaluate(source, Blank(), cache)
    assert not blank.structure.trained and blank.structure.judge == st.judge
    assert blank.structure.real_miou == st.real_miou  # same judge, same real aerials
    assert blank.scores["model"].structure_ratio < 0.4 and blank.scores["mean_colour"].structure_ratio < 0.4
    assert blank.scores["palette_lookup"] == perfect.scores["palette_lookup"]
    assert "read from the cache" in format_table(blank)
    with pytest.raises(AssertionError, match="cached judge"):  # another split is another judge
        evaluate(source, Blank(), split="val", val_fraction=0.4, split_by="hash", overlap=0, grid_tiles=0,
                 judge_recipe=TINY, judge_cache=cache)


@pytest.mark.slow
def test_structure_is_skipped_on_request_and_a_bad_cache_is_replaced(world, tmp_path):
    source = SideBySideFolder(world(n=12), direction="BtoA")
    off = _evaluate(source, torch.nn.Identity(), tmp_path / "never", structure=False)
    assert off.structure is None and off.scores["model"].structure_ratio is None
    assert not (tmp_path / "never").exists() and "not measured" in format_table(off)
    assert off.to_dict()["scores"]["model"]["structure_ratio"] is None

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(OutputPathError, match="--no-structure"):
        _evaluate(source, torch.nn.Identity(), blocked / "judges")

    first = _evaluate(source, torch.nn.Identity(), tmp_path / "c").structure
    first.judge.write_bytes(b"torn")
    second = _evaluate(source, torch.nn.Identity(), tmp_path / "c").structure
    assert second.trained and second.judge == first.judge and second.real_miou == first.real_miou


@pytest.mark.slow
def test_cli_evaluate_prints_and_writes_the_structure_score(world, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(judging, "DEFAULT_RECIPE", TINY)
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "tiny.pt", Generator(base_width=4, norm="instance"),
                              ground_resolution=2.0, provenance={"steps": 7})
    folder = world(n=16)
    out = tmp_path / "s.json"
    args = ["evaluate", str(folder), "--weights", str(weights), "--device", "cpu", "--split-by", "hash",
            "--val-fraction", "0.3", "--overlap", "0", "--json", str(out), "--overwrite"]
    result = CliRunner().invoke(main, ["-q", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "SSIM" in line)
    assert "struct" in header and "road" in header
    model_row = next(line for line in result.output.splitlines() if line.startswith("model "))
    assert len(model_row.split()) == 8  # name and seven figures
    record = json.loads(out.read_text())
    assert set(record["scores"]["model"]) == {"l1", "psnr", "ssim", "hist_distance", "sharpness_ratio",
                                             "structure_ratio", "miou", "road_iou"}
    assert 0 <= record["scores"]["model"]["structure_ratio"] and record["structure"]["judge_trained_now"]
    assert record["structure"]["judge"].startswith(str(tmp_path / "xdg" / "geo-pix2pix" / "judges"))
    assert record["structure"]["judge_recipe"]["steps"] == TINY.steps

    again = CliRunner().invoke(main, ["-q", *args], catch_exceptions=False)
    assert "read from the cache" in again.output
    assert json.loads(out.read_text())["scores"] == record["scores"]
    skipped = CliRunner().invoke(main, ["-q", *args, "--no-structure"], catch_exceptions=False)
    assert skipped.exit_code == 0 and "not measured" in skipped.output
    assert json.loads(out.read_text())["structure"] is None
