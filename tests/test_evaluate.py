"""The evaluator: metric values on known cases, the baselines, the render-equivalent
fast path, and the CLI, all on tiny paired folders made in code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from geo_pix2pix import render
from geo_pix2pix.cli.main import main
from geo_pix2pix.evaluate import metrics
from geo_pix2pix.evaluate.baselines import MeanColour, PaletteLookup
from geo_pix2pix.evaluate.evaluation import EVAL_SIZE, evaluate, format_table, render_tiles
from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.networks import Generator
from geo_pix2pix.train.data import SideBySideFolder, TwoFolders
from geo_pix2pix.train.regions import split_by

#: Map colour → aerial colour of the synthetic "world": water, park, road, buildings.
PALETTE = {(170, 210, 240): (40, 70, 90), (200, 235, 190): (70, 110, 50),
           (255, 255, 255): (120, 120, 115), (235, 230, 220): (160, 140, 120)}


def synthetic_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A map of random rectangles of the palette's colours, and an aerial whose colour
    is the palette's aerial colour plus texture noise."""
    keys = list(PALETTE)
    labels = np.zeros((size, size), np.int64)
    for _ in range(8):
        y, x = rng.integers(0, size, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        labels[y : y + h, x : x + w] = rng.integers(len(keys))
    map_ = np.array(keys, np.uint8)[labels]
    aerial = np.array([PALETTE[k] for k in keys], np.float64)[labels]
    aerial += rng.normal(0, 12, aerial.shape)
    return map_, np.clip(aerial, 0, 255).astype(np.uint8)


@pytest.fixture
def pair_folder(tmp_path):
    """Factory: a side-by-side folder (aerial | map, the maps dataset's BtoA layout)."""

    def factory(n=20, size=300, seed=0, same=False, name="pairs"):
        rng = np.random.default_rng(seed)
        folder = tmp_path / name
        folder.mkdir()
        for i in range(n):
            m, a = synthetic_pair(rng, size)
            if same:
                m = a  # textured, so that blur shows in the sharpness
            Image.fromarray(np.concatenate([a, m], axis=1)).save(folder / f"{i}.png")
        return folder

    return factory


class Blur(torch.nn.Module):
    def forward(self, x):
        return F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)


class Shift(torch.nn.Module):
    def forward(self, x):
        return (x + torch.tensor([0.4, 0.0, -0.4]).view(1, 3, 1, 1)).clamp(-1, 1)


# -- metrics on known cases ----------------------------------------------------------------
def test_metrics_of_identical_blurred_and_shifted_images():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    assert metrics.l1(img, img) == 0
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    assert metrics.psnr(img, img) == float("inf")
    assert metrics.histogram_distance(img, img) == 0
    assert metrics.sharpness(img) / metrics.sharpness(img) == 1.0
    blurred = metrics.as_unit(img).copy()
    blurred[:, 1:-1, 1:-1] = sum(blurred[:, 1 + dy : 63 + dy, 1 + dx : 63 + dx]
                                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    assert metrics.sharpness(blurred) / metrics.sharpness(img) < 0.6
    shifted = np.clip(img.astype(int) + [60, 0, 0], 0, 255).astype(np.uint8)
    assert metrics.histogram_distance(shifted, img) > 0.05  # red moved by ~60/256 of its range
    assert metrics.sharpness(shifted) > 0.0


def test_histogram_counts_add_up_over_batches():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 32, 32, 3)), rng.random((5, 32, 32, 3)) ** 2
    counts = metrics.colour_histogram(a[:2]) + metrics.colour_histogram(a[2:])
    assert metrics.histogram_distance_from_counts(counts, metrics.colour_histogram(b)) == pytest.approx(
        metrics.histogram_distance(a, b))


@pytest.mark.parametrize("model,check", [
    (torch.nn.Identity(), lambda s: s.l1 == 0 and s.ssim == pytest.approx(1) and s.hist_distance == 0
     and s.sharpness_ratio == 1 and s.psnr == float("inf")),
    (Blur(), lambda s: 0 < s.sharpness_ratio < 0.9 and s.l1 > 0),
    (Shift(), lambda s: s.hist_distance > 0.1 and s.sharpness_ratio == pytest.approx(1, abs=0.2)),
])
def test_evaluate_scores_known_models(pair_folder, model, check):
    """map == aerial, so an identity model is perfect, a blur loses sharpness, a colour
    shift moves the histogram."""
    source = SideBySideFolder(pair_folder(same=True), direction="BtoA")
    ev = evaluate(source, model, split="all", val_fraction=0.2, overlap=0, grid_tiles=0, structure=False)
    assert check(ev.scores["model"]), ev.scores["model"]
    assert ev.tiles == 20 and ev.grid is None


# -- baselines -----------------------------------------------------------------------------
def test_palette_lookup_learns_the_colour_table_and_beats_the_mean_colour():
    rng = np.random.default_rng(2)
    train = [synthetic_pair(rng, 128) for _ in range(6)]
    test_maps, test_aerials = zip(*(synthetic_pair(rng, 128) for _ in range(3)), strict=True)
    mean = MeanColour().fit(train)
    palette = PaletteLookup().fit(train)
    for k, v in PALETTE.items():
        got = palette.predict(np.array([[k]], np.uint8))[0, 0]
        assert np.abs(got.astype(int) - v).max() <= 2  # the mean of the noise is ~0
    maps, reals = np.stack(test_maps), np.stack(test_aerials)
    assert metrics.l1(palette.predict(maps), reals) < 0.5 * metrics.l1(mean.predict(maps), reals)
    assert (mean.predict(maps) == mean.colour).all()
    # A colour never seen in training takes the nearest seen colour's value.
    near = palette.predict(np.array([[[172, 212, 236]]], np.uint8))[0, 0]
    assert np.array_equal(near, palette.predict(np.array([[[170, 210, 240]]], np.uint8))[0, 0])


def test_baselines_in_evaluate_are_fitted_on_the_training_split(pair_folder):
    source = SideBySideFolder(pair_folder(n=24), direction="BtoA")
    for by in ("region", "hash"):
        train, val = split_by(source, by, 0.25)
        ev = evaluate(source, torch.nn.Identity(), split="val", val_fraction=0.25, split_by=by, overlap=0,
                      grid_tiles=0, structure=False)
        assert (ev.tiles, ev.train_tiles, ev.split_by) == (len(val), len(train), by) and val
    s = ev.scores
    assert s["palette_lookup"].l1 < s["mean_colour"].l1
    assert s["palette_lookup"].ssim > s["mean_colour"].ssim
    assert s["palette_lookup"].hist_distance < s["mean_colour"].hist_distance
    assert s["mean_colour"].sharpness_ratio == 0
    assert "palette lookup" in format_table(ev)


# -- the fast path is render's path --------------------------------------------------------
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("overlap", [None, 0, 32])
def test_fast_path_gives_the_pixels_of_render(tmp_path, tiny_generator, overlap):
    rng = np.random.default_rng(3)
    maps = np.stack([synthetic_pair(rng, EVAL_SIZE)[0] for _ in range(3)])
    maps[1] = rng.integers(0, 256, maps[1].shape)  # and a noisy one
    fast = render_tiles(tiny_generator, maps, **({} if overlap is None else {"overlap": overlap}))
    for i, m in enumerate(maps):
        src, dst = tmp_path / f"map{i}.png", tmp_path / f"out{i}.png"
        Image.fromarray(m).save(src)
        with pytest.warns(UserWarning, match="georeference"):
            render(src, dst, model=tiny_generator, overlap=overlap)
        assert np.array_equal(np.asarray(Image.open(dst).convert("RGB")), fast[i])


def test_pairs_are_resized_to_256_bicubic(pair_folder):
    folder = pair_folder(n=4, size=300)
    source = SideBySideFolder(folder, direction="BtoA")
    ev = evaluate(source, torch.nn.Identity(), split="all", overlap=0, grid_tiles=2, structure=False)
    assert ev.grid.shape == (2 * EVAL_SIZE, 4 * EVAL_SIZE, 3)
    m300 = np.asarray(Image.open(folder / source.names[0]))[:, 300:]
    expected = np.asarray(Image.fromarray(m300).resize((256, 256), Image.Resampling.BICUBIC))
    assert np.array_equal(ev.grid[:EVAL_SIZE, :EVAL_SIZE], expected)  # map column
    assert np.array_equal(ev.grid[:EVAL_SIZE, 2 * EVAL_SIZE : 3 * EVAL_SIZE], expected)  # identity model


# -- command line --------------------------------------------------------------------------
@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", Generator(base_width=4, norm="instance"),
                           ground_resolution=2.0, provenance={"steps": 7})


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_evaluate_writes_json_and_grid(pair_folder, tmp_path, weights):
    folder = pair_folder(n=20)
    out_json, out_grid = tmp_path / "scores.json", tmp_path / "grid.png"
    args = ("-q", "evaluate", folder, "--weights", weights, "--device", "cpu", "--split", "val",
            "--val-fraction", "0.3", "--json", out_json, "--grid", out_grid, "--grid-tiles", 3, "--no-structure")
    result = run(*args)
    assert result.exit_code == 0, result.output
    for name in ("model", "palette lookup", "mean colour", "SSIM", "sharp"):
        assert name in result.output
    record = json.loads(out_json.read_text())
    _, val = split_by(SideBySideFolder(folder), "region", 0.3)
    assert record["tiles"] == len(val) >= 3
    assert record["split"] == "val" and record["split_by"] == "region"
    assert record["image_size"] == 256 and record["overlap"] == 64
    assert record["model"]["steps"] == 7 and record["model"]["weights"] == str(weights)
    assert set(record["scores"]) == {"model", "palette_lookup", "mean_colour"}
    assert record["structure"] is None
    for scores in record["scores"].values():
        assert set(scores) == {"l1", "psnr", "ssim", "hist_distance", "sharpness_ratio", "structure_ratio", "miou",
                               "road_iou"}
        assert scores["structure_ratio"] is None
        assert 0 <= scores["l1"] <= 1 and 0 <= scores["hist_distance"] <= 1
    assert record["scores"]["mean_colour"]["sharpness_ratio"] == 0
    with Image.open(out_grid) as grid:
        assert grid.size == (4 * 256, 3 * 256) and grid.mode == "RGB"

    again = run(*args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert run(*args, "--overwrite").exit_code == 0


def test_cli_evaluate_two_folders_with_limit(tmp_path, weights):
    rng = np.random.default_rng(4)
    for sub in ("map", "aerial"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for i in range(6):
        m, a = synthetic_pair(rng, 256)
        Image.fromarray(m).save(tmp_path / "d" / "map" / f"t{i}.png")
        Image.fromarray(a).save(tmp_path / "d" / "aerial" / f"t{i}.png")
    assert len(TwoFolders(tmp_path / "d" / "map", tmp_path / "d" / "aerial")) == 6
    out_json = tmp_path / "s.json"
    result = run("-q", "evaluate", tmp_path / "d", "--layout", "folders", "--weights", weights,
                 "--split", "all", "--limit", 4, "--overlap", 0, "--json", out_json, "--no-structure")
    assert result.exit_code == 0, result.output
    assert json.loads(out_json.read_text())["tiles"] == 4


def test_cli_evaluate_empty_split_is_a_one_line_error(pair_folder, weights):
    result = run("evaluate", pair_folder(n=3), "--weights", weights, "--val-fraction", "0", "--no-structure")
    assert result.exit_code == 1
    assert "split" in result.output and "Traceback" not in result.output
    bad_overlap = run("evaluate", pair_folder(n=3, name="b"), "--weights", weights, "--split", "all",
                      "--overlap", 256, "--no-structure")
    assert bad_overlap.exit_code == 1 and "--overlap 256" in bad_overlap.output
