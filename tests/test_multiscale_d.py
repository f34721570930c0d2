"""pix2pixHD's multi-scale discriminator and feature-matching loss: an opt-in recipe
variant (issue 19) whose defaults leave the paper's networks and step as they were."""

from __future__ import annotations

import math

import pytest
import torch
from clihelpers import assert_user_error, cli
from test_train import TINY_G, config, make_pairs

from geo_pix2pix.errors import CheckpointError, OptionError
from geo_pix2pix.model.checkpoints import load_checkpoint, save_checkpoint
from geo_pix2pix.model.networks import Discriminator, DiscriminatorConfig, Generator
from geo_pix2pix.train.data import SideBySideFolder
from geo_pix2pix.train.trainer import TrainConfig, Trainer, checkpoint_recipe

TINY_D2 = DiscriminatorConfig(base_width=4, norm="instance", scales=2)
#: the 70×70 PatchGAN's state-dict keys (those of every checkpoint written before scales existed)
PATCHGAN_KEYS = ["net.0.conv.weight", "net.0.conv.bias", "net.1.conv.weight", "net.1.norm.weight", "net.1.norm.bias",
                 "net.2.conv.weight", "net.2.norm.weight", "net.2.norm.bias", "net.4.weight", "net.5.weight",
                 "net.5.bias", "net.8.weight", "net.8.bias"]


@pytest.mark.parametrize("scales", [1, 2, 3])
def test_every_scale_gives_four_activations_and_its_logits(scales):
    torch.manual_seed(0)
    d = Discriminator(base_width=4, norm="instance", scales=scales)
    m, a = torch.randn(2, 3, 256, 256), torch.randn(2, 3, 256, 256)
    outs = d.scale_outputs(m, a)
    assert [o[-1].shape for o in outs] == [(2, 1, s, s) for s in (30, 14, 6)[:scales]]  # 256, 128, 64 px
    assert [len(o) for o in outs] == [5] * scales
    assert [t.shape[1] for t in outs[0][:-1]] == [4, 8, 16, 32]
    assert all(torch.isfinite(t).all() for o in outs for t in o)
    assert torch.equal(d(m, a), outs[0][-1])  # forward: the full-resolution logits, as before
    assert d(m, a, scales=True)[-1][-1].shape == outs[-1][-1].shape
    assert len(d.coarser) == scales - 1


def test_one_scale_is_the_papers_discriminator_and_old_checkpoints_load(tmp_path):
    d = Discriminator(base_width=4, norm="instance")
    assert list(d.state_dict()) == PATCHGAN_KEYS
    assert d.config.to_dict() == {"in_channels": 6, "base_width": 4, "norm": "instance"}  # the file's config as before
    save_checkpoint(tmp_path / "one.pt", Generator(TINY_G), discriminator=d)
    raw = torch.load(tmp_path / "one.pt", weights_only=True)
    assert list(raw["discriminator"]["state_dict"]) == PATCHGAN_KEYS and "scales" not in raw["discriminator"]["config"]
    ckpt = load_checkpoint(tmp_path / "one.pt")
    assert ckpt.discriminator_config.scales == 1
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in ckpt.build_discriminator().state_dict().items())

    two = Discriminator(TINY_D2)
    save_checkpoint(tmp_path / "two.pt", Generator(TINY_G), discriminator=two)
    back = load_checkpoint(tmp_path / "two.pt").build_discriminator()
    assert back.config == TINY_D2 and back.state_dict().keys() == two.state_dict().keys()
    assert all(torch.equal(v, two.state_dict()[k]) for k, v in back.state_dict().items())


@pytest.mark.parametrize("scales", [0, 5])
def test_scales_are_one_to_four(scales):
    with pytest.raises(ValueError, match=f"scales={scales} must be from 1 to 4"):
        DiscriminatorConfig(scales=scales)


def test_feature_matching_weight_is_checked():
    with pytest.raises(OptionError, match="--feature-matching -1.0 must be a number ≥ 0"):
        TrainConfig(feature_matching=-1.0)


def test_default_step_reports_no_feature_matching(tmp_path):
    src = SideBySideFolder(make_pairs(tmp_path / "d", n=2))
    t = Trainer(src, tmp_path / "run", config(steps=1, amp=False), TINY_G, DiscriminatorConfig(base_width=4,
                                                                                               norm="instance"))
    assert not t.pix2pixhd and "loss_g_fm" not in t.step()


def test_multiscale_feature_matching_trains_checkpoints_and_resumes(tmp_path):
    src = SideBySideFolder(make_pairs(tmp_path / "d", n=4))
    cfg = dict(batch_size=1, amp=False, feature_matching=10.0)
    t = Trainer(src, tmp_path / "run", config(steps=2, **cfg), TINY_G, TINY_D2)
    assert t.pix2pixhd
    before = {k: v.clone() for k, v in t.D.state_dict().items()}
    losses = t.step()
    assert losses.keys() == {"loss_d", "loss_g_gan", "loss_g_l1", "loss_g_fm"}
    assert all(math.isfinite(v) for v in losses.values()) and losses["loss_g_fm"] > 0
    assert not torch.equal(before["coarser.0.0.conv.weight"], t.D.state_dict()["coarser.0.0.conv.weight"])
    assert all(p.grad is not None for p in t.G.parameters())
    t.fit()

    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.discriminator_config == TINY_D2
    d = ckpt.build_discriminator()
    assert all(torch.equal(v, t.D.state_dict()[k]) for k, v in d.state_dict().items())
    recipe = checkpoint_recipe(ckpt)
    assert (recipe["d_scales"], recipe["feature_matching"]) == (2, 10.0)

    again = Trainer(src, tmp_path / "run", config(steps=3, **cfg), TINY_G, TINY_D2)
    again.resume(tmp_path / "run" / "last.pt")
    assert again.state.step == 2
    again.fit()
    assert again.state.step == 3
    one = Trainer(src, tmp_path / "other", config(steps=3, **cfg), TINY_G, DiscriminatorConfig(base_width=4,
                                                                                               norm="instance"))
    with pytest.raises(CheckpointError, match="pass the same --d-width/--d-scales"):
        one.resume(tmp_path / "run" / "last.pt")


def test_cli_options_refuse_bad_values_and_a_resume_with_other_scales(tmp_path):
    data = make_pairs(tmp_path / "d", n=2)
    train = ("-q", "train", data, tmp_path / "run", "--width", "4", "--d-width", "4", "--steps", "1",
             "--val-fraction", "0", "--device", "cpu")
    assert_user_error(cli(*train, "--d-scales", "0"), "--d-scales 0 must be an integer from 1 to 4; 1 is the paper's")
    assert_user_error(cli(*train, "--feature-matching", "-1"), "--feature-matching -1 must be a finite number of "
                                                               "at least 0; pix2pixHD uses 10")
    assert not (tmp_path / "run").exists()

    first = Trainer(SideBySideFolder(data), tmp_path / "run",
                    config(steps=1, batch_size=1, amp=False, feature_matching=10.0), TINY_G, TINY_D2)
    first.fit()
    last = tmp_path / "run" / "last.pt"
    line = assert_user_error(cli(*train, "--steps", "2", "--d-scales", "1", "--resume", last),
                             "pass the same --d-width/--d-scales/--spectral-norm or start a new run")
    assert "scales=2" in line and load_checkpoint(last).provenance["steps"] == 1


@pytest.mark.slow
def test_two_gloo_processes_keep_every_scale_in_step(tmp_path):
    """The variant's D passes go through DDP's forward, so both ranks' coarser PatchGANs
    get averaged gradients and stay identical."""
    import os
    import subprocess
    import sys

    from test_distributed_train import EACH_RANK, _free_port

    data, run, ranks = make_pairs(tmp_path / "d"), tmp_path / "run", tmp_path / "ranks"
    ranks.mkdir()
    (tmp_path / "each.py").write_text(EACH_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(tmp_path / "each.py"), "-q", "train", str(data), str(run),
           "--width", "4", "--d-width", "4", "--steps", "2", "--batch-size", "1", "--load-size", "256-272",
           "--val-fraction", "0", "--device", "cpu", "--d-scales", "2", "--feature-matching", "10"]
    p = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", RANK_STATES=str(ranks)),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    saved = load_checkpoint(run / "last.pt").discriminator_state
    assert any(k.startswith("coarser.") for k in saved)
    for r in range(2):
        state = torch.load(ranks / f"{r}.pt", weights_only=True)["D"]
        assert all(torch.equal(state[k], v) for k, v in saved.items()), r


def test_memory_check_counts_the_coarser_discriminators_outputs():
    from geo_pix2pix.model.memory import layer_outputs, meta_module, train_bytes

    g = meta_module(lambda: Generator(TINY_G))
    one = meta_module(lambda: Discriminator(base_width=4, norm="instance"))
    two = meta_module(lambda: Discriminator(TINY_D2))
    x = torch.empty(1, 3, 256, 256, device="meta")
    full = layer_outputs(one, x, x, scales=True)
    # The half-resolution PatchGAN keeps about a quarter of the full one's outputs per sample.
    extra = layer_outputs(two, x, x, scales=True) - full
    assert 0.2 * full < extra < 0.3 * full
    params = sum(p.numel() for p in two.coarser.parameters())
    assert train_bytes(g, two, 4, 256, 300) - train_bytes(g, one, 4, 256, 300) >= 4 * 4 * extra + 4 * params
