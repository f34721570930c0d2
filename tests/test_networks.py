import pytest
import torch
from torch import nn

from geo_pix2pix import Discriminator, Generator
from geo_pix2pix.model.networks import GeneratorConfig, conv_macs, count_parameters, receptive_field


def expected_parameters(module: nn.Module) -> int:
    """Parameters computed from the layer list, layer by layer, from the layers' shapes."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            total += m.out_channels * m.in_channels * 16 + (m.out_channels if m.bias is not None else 0)
            assert m.kernel_size == (4, 4)
        elif isinstance(m, nn.ConvTranspose2d):
            total += m.in_channels * m.out_channels * 16 + (m.out_channels if m.bias is not None else 0)
            assert m.kernel_size == (4, 4) and m.stride == (2, 2)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            total += 2 * m.num_features
    return total


def test_paper_generator_layers_and_parameters():
    g = Generator()
    enc = [d.conv.out_channels for d in g.downs]
    dec = [u.conv.out_channels for u in g.ups]
    assert enc == [64, 128, 256, 512, 512, 512, 512, 512]
    assert dec == [512, 512, 512, 512, 256, 128, 64]
    assert [isinstance(u.drop, nn.Dropout) for u in g.ups] == [True] * 3 + [False] * 4
    assert isinstance(g.downs[0].norm, nn.Identity)  # C64: no norm
    assert isinstance(g.downs[-1].norm, nn.Identity)  # 1×1 bottleneck: no norm (deviation 1)
    assert all(isinstance(d.norm, nn.BatchNorm2d) for d in g.downs[1:-1])
    assert isinstance(g.head[-1], nn.Tanh) and g.head[0].out_channels == 3
    assert count_parameters(g) == expected_parameters(g) == 54_414_531
    # The measured cost in shared/notes: 6.05 G multiply-adds per 256² tile.
    assert conv_macs(g.config) == pytest.approx(6.05e9, rel=0.01)


def test_paper_discriminator_output_and_parameters():
    d = Discriminator()
    assert count_parameters(d) == expected_parameters(d) == 2_768_705
    x = torch.randn(1, 3, 256, 256)
    assert d(x, x).shape == (1, 1, 30, 30)


@pytest.mark.parametrize("width,norm", [(8, "instance"), (16, "batch")])
def test_generator_shape_range_and_finite(width, norm):
    g = Generator(base_width=width, norm=norm).eval()
    y = g(torch.randn(2, 3, 256, 256))
    assert y.shape == (2, 3, 256, 256)
    assert torch.isfinite(y).all() and y.abs().max() <= 1
    assert count_parameters(g) == expected_parameters(g)


def test_generator_accepts_larger_tiles():
    g = Generator(base_width=8, norm="instance").eval()
    assert g(torch.randn(1, 3, 512, 256)).shape == (1, 3, 512, 256)


def test_initialisation_is_normal_002():
    torch.manual_seed(1)
    g = Generator(base_width=32)
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.02)


def test_run_batch_output_does_not_depend_on_batching():
    import numpy as np

    from geo_pix2pix.model.load import run_batch
    from geo_pix2pix.model.spec import resolve_model

    torch.manual_seed(0)
    g = resolve_model(Generator(base_width=8, norm="instance"))
    tiles = np.random.default_rng(0).integers(0, 256, (9, 3, 256, 256), dtype=np.uint8)
    whole = run_batch(g, tiles)
    one_by_one = np.concatenate([run_batch(g, tiles[i : i + 1]) for i in range(9)])
    shuffled = run_batch(g, tiles[::-1].copy())[::-1]
    in_threes = np.concatenate([run_batch(g, tiles[i : i + 3]) for i in range(0, 9, 3)])
    assert np.array_equal(whole, one_by_one)
    assert np.array_equal(whole, shuffled)
    assert np.array_equal(whole, in_threes)


def test_config_validation():
    with pytest.raises(ValueError, match="norm"):
        GeneratorConfig(norm="group")
    with pytest.raises(TypeError):
        Generator(GeneratorConfig(), base_width=3)


def test_receptive_field():
    assert receptive_field(1) == 4
    assert receptive_field(8) == 766
