"""The hinge GAN loss and a spectrally normalised discriminator: opt-in recipe variants
(issue 19) whose defaults leave the paper's step and networks as they were."""

from __future__ import annotations

import math

import pytest
import torch
from clihelpers import assert_user_error, cli
from test_train import TINY_G, config, make_pairs

from geo_pix2pix.errors import CheckpointError, OptionError
from geo_pix2pix.model.checkpoints import load_checkpoint
from geo_pix2pix.model.networks import Discriminator, DiscriminatorConfig
from geo_pix2pix.train.data import SideBySideFolder
from geo_pix2pix.train.trainer import TrainConfig, Trainer, checkpoint_recipe

TINY_SN = DiscriminatorConfig(base_width=4, norm="instance", spectral_norm=True)


def trainer(tmp_path, name="run", dconf=TINY_SN, **kw):
    src = SideBySideFolder(make_pairs(tmp_path / "d", n=2))
    return Trainer(src, tmp_path / name, config(batch_size=1, amp=False, **kw), TINY_G, dconf)


def test_hinge_objectives_on_known_logits(tmp_path):
    t = trainer(tmp_path, gan_loss="hinge", steps=1)
    beyond = t._d_objective(torch.full((2, 1, 3, 3), -2.0), torch.full((2, 1, 3, 3), 2.0))
    assert beyond.item() == 0.0  # both past the margin: no loss, no gradient
    inside = t._d_objective(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert inside.item() == pytest.approx(1.0)  # ½ (1 + 1)
    assert t._g_objective(torch.tensor([[0.5, -1.5]])).item() == pytest.approx(0.5)
    bce = trainer(tmp_path, "bce", dconf=DiscriminatorConfig(base_width=4, norm="instance"), steps=1)
    assert bce._d_objective(torch.zeros(1, 1), torch.zeros(1, 1)).item() == pytest.approx(math.log(2))
    with pytest.raises(OptionError, match="--gan-loss 'wgan' must be one of bce, hinge"):
        TrainConfig(gan_loss="wgan")


def test_spectral_norm_bounds_every_convolution_of_d():
    torch.manual_seed(0)
    d = Discriminator(TINY_SN)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    pair = torch.randn(1, 3, 256, 256), torch.randn(1, 3, 256, 256)
    for _ in range(20):  # one power iteration per training-mode forward
        d(*pair)
    sigmas = [torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item() for m in convs]
    assert sigmas == pytest.approx([1.0] * 5, rel=0.05)
    assert "spectral_norm" not in DiscriminatorConfig().to_dict() and TINY_SN.to_dict()["spectral_norm"] is True


def test_hinge_with_spectral_norm_trains_checkpoints_and_resumes(tmp_path):
    t = trainer(tmp_path, gan_loss="hinge", steps=2)
    losses = t.step()
    assert all(math.isfinite(v) for v in losses.values())
    t.fit()
    last = tmp_path / "run" / "last.pt"
    ckpt = load_checkpoint(last)
    assert ckpt.discriminator_config == TINY_SN
    back = ckpt.build_discriminator().state_dict()
    assert back.keys() == t.D.state_dict().keys()  # the power iteration's vectors too
    assert all(torch.equal(v, t.D.state_dict()[k]) for k, v in back.items())
    recipe = checkpoint_recipe(ckpt)
    assert (recipe["gan_loss"], recipe["spectral_norm"]) == ("hinge", True)

    again = trainer(tmp_path, gan_loss="hinge", steps=3)
    again.resume(last)
    again.fit()
    assert again.state.step == 3
    plain = trainer(tmp_path, "other", dconf=DiscriminatorConfig(base_width=4, norm="instance"), steps=3)
    with pytest.raises(CheckpointError, match="pass the same --d-width/--d-scales/--spectral-norm"):
        plain.resume(last)


def test_cli_keeps_the_variant_on_resume(tmp_path):
    data = make_pairs(tmp_path / "d", n=2)
    train = ("-q", "train", data, tmp_path / "run", "--width", "4", "--d-width", "4", "--val-fraction", "0",
             "--device", "cpu", "--batch-size", "1", "--no-amp")
    result = cli(*train, "--steps", "1", "--gan-loss", "hinge", "--spectral-norm")
    assert result.exit_code == 0, result.output
    last = tmp_path / "run" / "last.pt"
    assert cli(*train, "--steps", "2", "--resume", last).exit_code == 0
    ckpt = load_checkpoint(last)
    assert ckpt.provenance["steps"] == 2 and ckpt.discriminator_config.spectral_norm
    assert checkpoint_recipe(ckpt)["gan_loss"] == "hinge"
    assert_user_error(cli(*train, "--steps", "3", "--no-spectral-norm", "--resume", last),
                      "pass the same --d-width/--d-scales/--spectral-norm or start a new run")
