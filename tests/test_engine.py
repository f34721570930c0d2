"""The inference engine computes the generator's function, for every norm and width."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from torch import nn

from geo_pix2pix import Generator
from geo_pix2pix.model.devices import cpu_has_native_bf16
from geo_pix2pix.model.engine import InferenceUNet, SubPixelDeconv, fold_batch_norm
from geo_pix2pix.model.load import Pix2PixModel, run_batch
from geo_pix2pix.model.networks import GeneratorConfig


def trained_like(config: GeneratorConfig, seed: int = 0) -> Generator:
    """A generator whose norm layers hold non-trivial statistics and affine terms."""
    torch.manual_seed(seed)
    g = Generator(config)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return g.eval()


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("width", [8, 16])
@pytest.mark.parametrize("subpixel_decoder", [False, True])
def test_engine_equals_generator(norm, width, subpixel_decoder):
    g = trained_like(GeneratorConfig(base_width=width, norm=norm))
    x = torch.rand(3, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        want = g(x)
        got = InferenceUNet(g, subpixel_decoder=subpixel_decoder)(x)
    assert got.shape == want.shape and got.is_contiguous()
    assert float((got - want).abs().max()) < 1e-4


def test_engine_memory_format_follows_the_norm():
    assert InferenceUNet(trained_like(GeneratorConfig(base_width=8, norm="batch"))).channels_last
    assert not InferenceUNet(trained_like(GeneratorConfig(base_width=8, norm="instance"))).channels_last


def test_engine_refuses_a_training_generator():
    with pytest.raises(ValueError, match="eval mode"):
        InferenceUNet(Generator(base_width=8).train())


@pytest.mark.parametrize("cin, cout, size", [(5, 3, 7), (4, 6, 1), (2, 1, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_subpixel_deconv_equals_transposed_conv(cin, cout, size, bias):
    torch.manual_seed(cin)
    deconv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias)
    x = torch.randn(2, cin, size, size + 2)
    with torch.no_grad():
        got = SubPixelDeconv(deconv)(x)
        assert got.shape == (2, cout, 2 * size, 2 * size + 4)
        assert got.is_contiguous(memory_format=torch.channels_last)  # what the next convolution wants
        assert float((got - deconv(x)).abs().max()) < 1e-5


def test_subpixel_deconv_refuses_other_geometry():
    with pytest.raises(ValueError, match="kernel 4, stride 2"):
        SubPixelDeconv(nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1))


@pytest.mark.parametrize("transposed", [False, True])
def test_fold_batch_norm(transposed):
    torch.manual_seed(1)
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(4, 6, 4, stride=2, padding=1, bias=False)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    folded, rest = fold_batch_norm(conv, bn)
    assert rest is None
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert float((folded(x) - bn(conv(x))).abs().max()) < 1e-5
    # A norm that cannot be folded is kept, the convolution copied.
    inorm = nn.InstanceNorm2d(6, affine=True)
    copied, kept = fold_batch_norm(conv, inorm)
    assert kept is inorm and copied is not conv


def test_model_uses_the_engine_and_follows_weight_changes():
    """The engine is a snapshot of the weights: rebuilt after load_state_dict, train(),
    to() and refresh(), so a change of the weights after a first run is seen."""
    g = trained_like(GeneratorConfig(base_width=8, norm="batch"))
    model = Pix2PixModel(g)
    tiles = np.random.default_rng(0).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)

    def eager():
        with torch.no_grad():
            return g(torch.from_numpy(tiles).float() / 127.5 - 1).numpy()

    first = run_batch(model, tiles)
    engine = model.engine()
    assert model.engine() is engine  # cached while nothing changed
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["generator.head.0.bias"] += 0.5
    model.load_state_dict(state)
    second = run_batch(model, tiles)
    assert np.abs(second - eager()).max() < 1e-4 and np.abs(second - first).max() > 1e-3
    model.train()
    with torch.no_grad():
        g.head[0].bias.sub_(0.5)  # fine-tuning happens in training mode
    assert np.abs(run_batch(model.eval(), tiles) - first).max() < 1e-4
    with torch.no_grad():
        g.head[0].bias.add_(0.25)  # edited in place, in eval mode: refresh() says so
    model.refresh()
    assert np.abs(run_batch(model, tiles) - eager()).max() < 1e-4
    engine = model.engine()
    model.to("cpu")
    assert model.engine() is not engine


def test_model_with_autograd_runs_the_generator():
    g = trained_like(GeneratorConfig(base_width=8, norm="instance"))
    model = Pix2PixModel(g)
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    model(x).mean().backward()  # the engine has no autograd; the generator does
    assert x.grad is not None and model.__dict__.get("_engine") is None


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_bfloat16_engine_is_the_generator_to_bfloat16_precision(norm, monkeypatch):
    """--precision bf16: the same function within bfloat16 rounding, float32 in and out,
    and building it leaves the generator (whose InstanceNorm layers the float32 engine
    shares) in float32."""
    monkeypatch.setattr("geo_pix2pix.model.load.cpu_has_native_bf16", lambda: True)
    g = trained_like(GeneratorConfig(base_width=8, norm=norm))
    model = Pix2PixModel(g, precision="bf16")
    tiles = np.random.default_rng(1).integers(0, 256, (3, 3, 256, 256), dtype=np.uint8)
    got = run_batch(model, tiles)
    assert got.dtype == np.float32
    assert all(p.dtype == torch.float32 for p in g.parameters())
    with torch.no_grad():
        want = g(torch.from_numpy(tiles).float() / 127.5 - 1).numpy()
    diff = np.abs(got - want)
    assert diff.mean() < 0.01 and diff.max() < 0.1  # 0.01 on [-1, 1]: under a grey level
    assert diff.max() > 0  # it did run in bfloat16
    assert np.abs(run_batch(Pix2PixModel(g), tiles) - want).max() < 1e-4  # the generator is unchanged


def test_bfloat16_without_hardware_support_warns(monkeypatch):
    monkeypatch.setattr("geo_pix2pix.model.load.cpu_has_native_bf16", lambda: False)
    model = Pix2PixModel(trained_like(GeneratorConfig(base_width=8, norm="instance")), precision="bf16")
    with pytest.warns(UserWarning, match="no bfloat16 arithmetic .* use --precision int8 or fp32"):
        model.engine()


def test_run_batch_autocasts_only_float32_models(monkeypatch):
    """A bf16 (or int8) engine runs in its own precision: on CUDA, float16 autocast would
    recast a bfloat16 engine to float16 on every call."""
    import geo_pix2pix.model.load as model_module

    seen = []
    real = model_module.autocast

    def spy(device, enabled=True, **kw):
        seen.append(enabled)
        return real(device, enabled, **kw)

    monkeypatch.setattr(model_module, "autocast", spy)
    g = trained_like(GeneratorConfig(base_width=8, norm="instance"))
    tiles = np.zeros((1, 3, 256, 256), np.uint8)
    run_batch(Pix2PixModel(g), tiles)
    with pytest.warns(UserWarning) if not cpu_has_native_bf16() else nullcontext():
        run_batch(Pix2PixModel(g, precision="bf16"), tiles)
    assert seen == [True, False]


def test_a_pickled_model_leaves_the_checkpoints_other_contents_behind(tmp_path):
    """What a Dask worker receives: the generator and the facts, not the file's second
    copy of the weights, its discriminator or its optimiser state."""
    import pickle

    from geo_pix2pix.model.checkpoints import save_checkpoint
    from geo_pix2pix.model.load import load_model
    from geo_pix2pix.model.networks import Discriminator, DiscriminatorConfig

    g = trained_like(GeneratorConfig(base_width=8, norm="instance"))
    path = save_checkpoint(tmp_path / "m.pt", g, discriminator=Discriminator(DiscriminatorConfig(base_width=8)),
                           ground_resolution=2.0)
    model = load_model(path)
    assert model.checkpoint.discriminator_state
    copy = pickle.loads(pickle.dumps(model))
    assert copy.checkpoint.discriminator_state is None and not copy.checkpoint.generator_state
    assert copy.identity == model.identity and copy.ground_resolution == 2.0
    assert model.checkpoint.discriminator_state  # the original keeps everything
    tiles = np.random.default_rng(2).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    assert np.array_equal(run_batch(copy, tiles), run_batch(model, tiles))


# The channels-last engine chosen on CPUs with AMX (model/engine_amx.py). Its code runs on any CPU:
# in float32 it is held to the generator's function, in bfloat16 to bfloat16 rounding.

@pytest.fixture
def amx_choice(monkeypatch):
    """The engine chooses as on a CPU with AMX."""
    from geo_pix2pix.model import devices

    monkeypatch.setattr(devices, "cpu_bf16_kind", lambda: "amx")


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("width", [8, 16])
@pytest.mark.parametrize("shape", [(3, 3, 256, 256), (1, 3, 512, 256)])
def test_channels_last_engine_equals_generator(norm, width, shape):
    from geo_pix2pix.model.engine_amx import ChannelsLastUNet

    g = trained_like(GeneratorConfig(base_width=width, norm=norm))
    x = torch.rand(*shape) * 2 - 1
    engine = ChannelsLastUNet(g, dtype=torch.float32)
    with torch.no_grad():
        want, got = g(x), engine(x)
    assert got.shape == want.shape and got.dtype == torch.float32 and got.is_contiguous()
    assert float((got - want).abs().max()) < 1e-4


@pytest.mark.parametrize("cin, cout, size", [(5, 3, 7), (8, 6, 1)])
def test_parity_major_conv_and_interleave_equal_transposed_conv(cin, cout, size):
    from geo_pix2pix.model.engine_amx import interleave_into, parity_major_conv

    torch.manual_seed(cin)
    deconv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    x = torch.randn(2, cin, size, size + 2)
    with torch.no_grad():
        want = deconv(x)
        z = parity_major_conv(deconv)(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            out = torch.empty(want.shape).contiguous(memory_format=layout)
            assert float((interleave_into(z, out) - want).abs().max()) < 1e-5


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_tile_norm_is_instance_norm_and_activation(slope):
    from geo_pix2pix.model.engine_amx import TileNorm

    torch.manual_seed(3)
    norm = nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = (torch.randn(3, 6, 8, 4) * 3 + 1).contiguous(memory_format=torch.channels_last)
    act = nn.LeakyReLU(slope) if slope else nn.ReLU()
    with torch.no_grad():
        want = act(norm(x))
        out = torch.empty(3, 10, 8, 4).contiguous(memory_format=torch.channels_last)[:, 2:8]
        assert float((TileNorm(norm, slope)(x.clone(), out=out) - want).abs().max()) < 1e-5
        assert float((TileNorm(norm, slope)(x.clone()) - want).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="running"):
        TileNorm(nn.InstanceNorm2d(6, track_running_stats=True), 0.0)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_bfloat16_engine_follows_the_cpu(norm, amx_choice):
    """--precision bf16 on a CPU with AMX runs the channels-last engine, elsewhere the
    float32 engine's graph; both within bfloat16 rounding of the generator, on any CPU."""
    from geo_pix2pix.model.engine import bfloat16_engine
    from geo_pix2pix.model.engine_amx import ChannelsLastUNet

    g = trained_like(GeneratorConfig(base_width=8, norm=norm))
    assert isinstance(bfloat16_engine(g), ChannelsLastUNet)
    assert isinstance(bfloat16_engine(g, cpu="avx512_bf16"), InferenceUNet)
    assert isinstance(bfloat16_engine(g, cpu=None), InferenceUNet)
    model = Pix2PixModel(g, precision="bf16")
    tiles = np.random.default_rng(4).integers(0, 256, (3, 3, 256, 256), dtype=np.uint8)
    with pytest.warns(UserWarning) if not cpu_has_native_bf16() else nullcontext():
        got = run_batch(model, tiles)
    assert isinstance(model.engine(), ChannelsLastUNet)
    with torch.no_grad():
        want = g(torch.from_numpy(tiles).float() / 127.5 - 1).numpy()
    diff = np.abs(got - want)
    assert got.dtype == np.float32 and 0 < diff.max() < 0.1 and diff.mean() < 0.01
    assert all(p.dtype == torch.float32 for p in g.parameters())  # the generator is left as it was
    # A tile's output does not depend on its batch-mates (the fixed compute chunk).
    assert np.array_equal(run_batch(model, tiles[1:2]), got[1:2])


def test_cpu_bf16_kind_reads_the_flags(monkeypatch):
    from geo_pix2pix.model import devices

    assert devices.cpu_bf16_kind() in ("amx", "avx512_bf16", None)
    assert devices.cpu_has_native_bf16() == (devices.cpu_bf16_kind() is not None)
    if not torch.backends.mkldnn.is_available():
        return
    cases = [({"avx2", "fma"}, None), ({"avx2", "avx512f", "avx512_bf16"}, "avx512_bf16"),
             ({"avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}, "amx")]
    for flags, kind in cases:
        monkeypatch.setattr(devices, "cpu_flags", lambda f=frozenset(flags): f)
        assert devices.cpu_bf16_kind.__wrapped__() == kind


def test_float32_engine_follows_the_cpu(amx_choice):
    from geo_pix2pix.model.engine import float32_engine
    from geo_pix2pix.model.engine_amx import ChannelsLastUNet

    g = trained_like(GeneratorConfig(base_width=8, norm="instance"))
    assert isinstance(float32_engine(g, cpu="avx512_bf16"), InferenceUNet)
    model = Pix2PixModel(g)
    tiles = np.random.default_rng(5).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    got = run_batch(model, tiles)
    assert isinstance(model.engine(), ChannelsLastUNet) and model.engine().dtype == torch.float32
    with torch.no_grad():
        want = g(torch.from_numpy(tiles).float() / 127.5 - 1).numpy()
    assert np.abs(got - want).max() < 1e-4
