"""The region split, map classes, and the training recipe options that go with them
(augmentation, EMA of the generator)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from geo_pix2pix.errors import OptionError
from geo_pix2pix.model.checkpoints import load_checkpoint
from geo_pix2pix.model.networks import DiscriminatorConfig, GeneratorConfig
from geo_pix2pix.train.data import Jitter, JitteredPairs, PairSource
from geo_pix2pix.train.regions import map_classes, region_features, region_split, split_by
from geo_pix2pix.train.trainer import TrainConfig, Trainer

BACKGROUND, ROAD, WATER, GREEN = (232, 232, 216), (250, 250, 250), (184, 216, 248), (200, 216, 168)


def street_grid(angle: float, spacing: int, size: int = 256, width: int = 6, avenues: int = 3) -> np.ndarray:
    """A map of white streets at ``angle`` degrees, and avenues at right angles to them
    ``avenues`` times as far apart (Manhattan's blocks are long)."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    a = np.deg2rad(angle)
    u, v = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    road = (np.mod(u, spacing) < width) | (np.mod(v, avenues * spacing) < width)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUND
    img[road] = ROAD
    return img


def flat(colour) -> np.ndarray:
    img = np.empty((256, 256, 3), np.uint8)
    img[:] = colour
    return img


class Maps(PairSource):
    def __init__(self, maps: list[np.ndarray]) -> None:
        super().__init__()
        self.maps = maps
        self.names = [f"{i}.png" for i in range(len(maps))]

    def _load(self, index):
        m = self.maps[index]
        return m, (m * 0.5).astype(np.uint8)


def test_map_classes_reads_the_palette():
    img = np.stack([flat(c)[0, :4] for c in (BACKGROUND, ROAD, WATER, GREEN)])
    assert map_classes(img).tolist() == [[0] * 4, [1] * 4, [2] * 4, [3] * 4]


def test_features_tell_grid_orientations_apart():
    a, b = region_features(street_grid(0, 40)), region_features(street_grid(30, 40))
    assert a[3] == pytest.approx(b[3], abs=0.05)  # the same road fraction
    assert np.hypot(*(a[4:] - b[4:])) > 0.1  # different grid angles


def test_region_split_holds_out_the_most_built_up_neighbourhoods():
    rng = np.random.default_rng(0)
    dense = [street_grid(29 + rng.uniform(-2, 2), 24) for _ in range(12)]  # the dense city
    sparse = [street_grid(rng.uniform(-2, 2), 80, width=4) for _ in range(12)]
    water = [flat(WATER) for _ in range(12)]
    parks = [flat(GREEN) for _ in range(12)]
    maps = dense + sparse + water + parks
    order = rng.permutation(len(maps))
    source = Maps([maps[i] for i in order])
    train, val = region_split(source, 0.2)
    held = {int(order[i]) for i in val}
    assert held <= set(range(12)) and len(held) >= 0.2 * len(maps)  # the dense city only
    assert sorted(train + val) == list(range(len(maps)))
    assert (train, val) == region_split(source, 0.2)  # deterministic
    assert region_split(source, 0.0) == (list(range(len(maps))), [])
    assert split_by(source, "hash", 0.2)[1] != val


def test_dihedral_jitter_turns_map_and_aerial_together():
    m = np.zeros((256, 256, 3), np.uint8)
    m[:32, :64] = 255  # a block in one corner: its position tells the orientation
    source = Maps([m])
    pairs = JitteredPairs(source, [0], Jitter((256, 256), 256, "dihedral"), seed=1)
    corners = set()
    for _ in range(40):
        mp, ae = pairs.sample(1)
        assert torch.equal((mp > 0), (ae > -0.5) & (mp > 0))  # the aerial moved with the map
        bright = (mp[0, 0] > 0).nonzero().float().mean(0)
        corners.add((int(bright[0] > 128), int(bright[1] > 128), int((mp[0, 0] > 0).sum(0).amax() > 40)))
    assert len(corners) == 8  # all mirrors and turns occur
    mirror = JitteredPairs(source, [0], Jitter((256, 256), 256, "mirror"), seed=1)
    assert {int((mirror.sample(1)[0][0, 0] > 0).nonzero().float().mean(0)[0] > 128) for _ in range(20)} == {0}
    with pytest.raises(OptionError, match="--augment 'rot'"):
        Jitter(augment="rot")


def test_ema_generator_is_shipped_and_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    source = Maps([rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(4)])
    g, d = GeneratorConfig(base_width=4, norm="instance"), DiscriminatorConfig(base_width=4, norm="instance")
    cfg = dict(batch_size=1, load_size=(256, 256), val_fraction=0.0, sample_every=0, val_every=0,
               log_every=1, checkpoint_every=1000, ema=0.5, amp=False)
    straight = Trainer(source, tmp_path / "a", TrainConfig(steps=4, **cfg), g, d, "cpu")
    straight.fit()
    ckpt = load_checkpoint(tmp_path / "a" / "model.pt")
    shipped = ckpt.build_generator().state_dict()
    ema = straight.G_ema.module.state_dict()
    assert all(torch.equal(shipped[k], ema[k].to(shipped[k].dtype)) for k in shipped)
    assert any(not torch.equal(straight.G.state_dict()[k], ema[k]) for k in ema)  # it is an average

    first = Trainer(source, tmp_path / "b", TrainConfig(steps=2, **cfg), g, d, "cpu")
    first.fit()
    second = Trainer(source, tmp_path / "b", TrainConfig(steps=4, **cfg), g, d, "cpu")
    second.resume(tmp_path / "b" / "last.pt")
    second.fit()
    for a, b in ((straight.G, second.G), (straight.G_ema.module, second.G_ema.module)):
        for k, v in a.state_dict().items():
            assert torch.allclose(v, b.state_dict()[k], atol=1e-6), k


def test_ema_must_be_below_one(tmp_path):
    source = Maps([flat(ROAD)])
    with pytest.raises(OptionError, match="--ema 1.0 must be in"):
        Trainer(source, tmp_path, TrainConfig(ema=1.0, val_fraction=0.0),
                GeneratorConfig(base_width=4), DiscriminatorConfig(base_width=4), "cpu")


# -- the CLI's recipe: presets, and --resume continuing the run's own ----------------------
def _pairs_folder(folder, n=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        m = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(np.concatenate([m // 2, m], axis=1)).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow
def test_resume_continues_the_runs_recipe_and_says_what_it_overrides(tmp_path):
    from click.testing import CliRunner

    from geo_pix2pix.cli.main import main
    from geo_pix2pix.train.trainer import checkpoint_recipe

    data, out = _pairs_folder(tmp_path / "d"), tmp_path / "run"
    common = ["train", str(data), str(out), "--device", "cpu", "--no-amp"]
    first = CliRunner().invoke(main, [*common, "--width", "4", "--d-width", "4", "--batch-size", "2", "--steps", "2",
                                      "--load-size", "256", "--augment", "dihedral", "--val-fraction", "0"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, [*common, "--steps", "3", "--resume", str(out / "last.pt")])
    assert again.exit_code == 0, again.output
    assert "overriding --steps 3 (was 2)" in again.output
    recipe = checkpoint_recipe(load_checkpoint(out / "last.pt"))
    assert (recipe["width"], recipe["d_width"], recipe["batch_size"], recipe["augment"], recipe["steps"],
            recipe["load_size"], recipe["val_fraction"]) == (4, 4, 2, "dihedral", 3, "256", 0.0)
    slim = load_checkpoint(out / "model.pt")
    assert slim.discriminator_state is None and slim.training is None  # the generator alone


@pytest.mark.slow
def test_preset_sets_the_recipe_and_options_override_it(tmp_path):
    from click.testing import CliRunner

    from geo_pix2pix.cli.main import main

    data, out = _pairs_folder(tmp_path / "d"), tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(data), str(out), "--preset", "default", "--width", "4",
                                    "--d-width", "4", "--steps", "1", "--decay-steps", "0", "--batch-size", "1",
                                    "--device", "cpu", "--no-amp", "--val-fraction", "0"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(out / "last.pt")
    cfg = json.loads(ckpt.training["config"])
    assert cfg["load_size"] == [256, 300] and ckpt.ground_resolution == 2.12  # from the preset
    assert ckpt.generator_config.base_width == 4 and cfg["steps"] == 1  # given: they win


def test_progress_is_reported_every_step(tmp_path):
    source = Maps([flat(ROAD)] * 2)
    seen = []
    t = Trainer(source, tmp_path, TrainConfig(steps=3, log_every=50, batch_size=1, load_size=(256, 256),
                                              val_fraction=0.0, sample_every=0, val_every=0, amp=False),
                GeneratorConfig(base_width=4, norm="instance"), DiscriminatorConfig(base_width=4, norm="instance"),
                "cpu")
    t.fit(lambda step, rec: seen.append((step, "loss_g_l1" in rec)))
    assert seen == [(1, True), (2, True), (3, True)]


@pytest.mark.parametrize("field, value, words", [
    ("checkpoint_every", 0, "--checkpoint-every 0 must be at least 1"),
    ("lr", float("nan"), "--lr nan must be a positive number"),
    ("steps", 0, "--steps 0 must be at least 1"),
    ("decay_steps", 5, "--decay-steps 5 must be between 0 and --steps 4"),
    ("batch_size", 0, "--batch-size 0 must be at least 1"),
    ("l1_weight", float("inf"), "--l1-weight inf must be a number"),
    ("split_by", "random", "--split-by 'random' must be one of region, hash"),
    ("load_size", (300, 290), "--load-size '300-290' must be N or LOW-HIGH with LOW ≤ HIGH"),
    ("load_size", (200, 300), "--load-size 200 is smaller than the 256 px training crop"),
])
def test_python_callers_get_the_command_lines_rules(field, value, words):
    with pytest.raises(OptionError, match=re.escape(words)):
        TrainConfig(**{"steps": 4, field: value})
