"""Resize-convolution decoder layers: an opt-in recipe variant (issue 19) computed as the
transposed convolutions they equal, so that every engine runs them unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from clihelpers import assert_user_error, cli
from test_train import config, make_pairs

from geo_pix2pix.errors import CheckpointError
from geo_pix2pix.model.checkpoints import load_checkpoint, save_checkpoint
from geo_pix2pix.model.engine import InferenceUNet, bfloat16_engine
from geo_pix2pix.model.engine_amx import ChannelsLastUNet
from geo_pix2pix.model.networks import DiscriminatorConfig, Generator, GeneratorConfig, ResizeConv
from geo_pix2pix.train.data import SideBySideFolder
from geo_pix2pix.train.trainer import Trainer, checkpoint_recipe

TINY_RESIZE = GeneratorConfig(base_width=4, norm="instance", upsample="resize")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (5, 8), (6, 3)])
def test_resize_conv_is_nearest_upsampling_then_a_3x3_convolution(bias, shape):
    torch.manual_seed(0)
    layer = ResizeConv(5, 7, bias=bias).double()
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 5, *shape, dtype=torch.float64)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    want = F.conv2d(up, layer.weight, layer.bias, padding=1)  # zero padding on the upsampled image
    assert layer(x).shape == (2, 7, 2 * shape[0], 2 * shape[1])
    torch.testing.assert_close(layer(x), want, rtol=0, atol=1e-12)
    deconv = layer.as_conv_transpose()
    assert isinstance(deconv, torch.nn.ConvTranspose2d) and deconv.weight.shape == (5, 7, 4, 4)
    torch.testing.assert_close(deconv(x), want, rtol=0, atol=1e-12)


def test_gradients_reach_the_3x3_kernel_only():
    layer = ResizeConv(3, 2)
    layer(torch.randn(1, 3, 4, 4)).square().sum().backward()
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.grad.shape == (2, 3, 3, 3) and layer.weight.grad.abs().sum() > 0


def test_resize_generator_runs_in_every_engine_as_the_eager_network():
    torch.manual_seed(0)
    gen = Generator(TINY_RESIZE).eval()
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in gen.modules())
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        want = gen(x)
        torch.testing.assert_close(InferenceUNet(gen)(x), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(ChannelsLastUNet(gen, dtype=torch.float32)(x), want, rtol=0, atol=1e-5)
        for cpu in ("amx", "avx512_bf16"):
            assert (bfloat16_engine(gen, cpu=cpu)(x) - want).abs().max() < 0.1


def test_checkpoints_keep_the_decoder_and_say_version_2(tmp_path):
    gen = Generator(TINY_RESIZE)
    for storage in ("float32", "int8"):
        path = save_checkpoint(tmp_path / f"{storage}.pt", gen, storage=storage)
        raw = torch.load(path, weights_only=True)
        assert raw["format_version"] == 2 and raw["generator"]["config"]["upsample"] == "resize"
        back = load_checkpoint(path)
        assert back.generator_config == TINY_RESIZE
        assert back.build_generator().state_dict().keys() == gen.state_dict().keys()
    paper = save_checkpoint(tmp_path / "deconv.pt", Generator(base_width=4, norm="instance"))
    raw = torch.load(paper, weights_only=True)
    assert raw["format_version"] == 1 and "upsample" not in raw["generator"]["config"]  # as before
    with pytest.raises(ValueError, match="upsample='bilinear' is not one of deconv, resize"):
        GeneratorConfig(upsample="bilinear")


def test_training_resumes_with_the_same_decoder_and_refuses_another(tmp_path):
    data = make_pairs(tmp_path / "d", n=2)
    dconf = DiscriminatorConfig(base_width=4, norm="instance")
    Trainer(SideBySideFolder(data), tmp_path / "run", config(steps=1, batch_size=1, amp=False), TINY_RESIZE,
            dconf).fit()
    last = tmp_path / "run" / "last.pt"
    assert checkpoint_recipe(load_checkpoint(last))["upsample"] == "resize"
    deconv = Trainer(SideBySideFolder(data), tmp_path / "other", config(steps=2, batch_size=1, amp=False),
                     GeneratorConfig(base_width=4, norm="instance"), dconf)
    with pytest.raises(CheckpointError, match="pass the same --width/--norm/--upsample"):
        deconv.resume(last)

    train = ("-q", "train", data, tmp_path / "run", "--width", "4", "--d-width", "4", "--val-fraction", "0",
             "--device", "cpu", "--batch-size", "1", "--no-amp")
    result = cli(*train, "--steps", "2", "--resume", last)  # the recipe's --upsample resize, continued
    assert result.exit_code == 0, result.output
    assert load_checkpoint(last).generator_config == TINY_RESIZE and load_checkpoint(last).provenance["steps"] == 2
    assert_user_error(cli(*train, "--steps", "3", "--upsample", "deconv", "--resume", last),
                      "pass the same --width/--norm/--upsample or start a new run")
    bad = cli(*train[:3], tmp_path / "new", *train[4:], "--upsample", "bilinear")  # click's usage error
    assert bad.exit_code == 2 and "'bilinear' is not one of 'deconv', 'resize'" in bad.output


def test_memory_check_counts_the_resize_decoders_outputs():
    from geo_pix2pix.model.memory import layer_outputs, meta_module

    x = torch.empty(1, 3, 256, 256, device="meta")
    deconv = meta_module(lambda: Generator(base_width=4, norm="instance"))
    resize = meta_module(lambda: Generator(TINY_RESIZE))
    assert layer_outputs(resize, x) == layer_outputs(deconv, x)  # the same layer outputs, kept for backward
