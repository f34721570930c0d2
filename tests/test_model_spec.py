"""One way to name a model (ModelSpec) and one resolver: every kind of model gets its facts,
a generator gets the engine, and a spec travels to worker processes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

import geo_pix2pix.model.load as model_module
from geo_pix2pix.errors import OptionError
from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.load import InferenceModel, Pix2PixModel, PlainModel, load_model, run_batch
from geo_pix2pix.model.provenance import model_identity
from geo_pix2pix.model.spec import ModelSpec, resolve_model
from geo_pix2pix.render import render
from geo_pix2pix.tiles import CopyModel


@pytest.fixture
def engines_built(monkeypatch):
    """The generators the float32 engine was built from."""
    built = []
    real = model_module.float32_engine

    def spy(gen, *args, **kwargs):
        built.append(gen)
        return real(gen, *args, **kwargs)

    monkeypatch.setattr(model_module, "float32_engine", spy)
    return built


def test_a_plain_generator_gets_the_engine(tiny_generator, engines_built):
    model = resolve_model(tiny_generator, "cpu")
    assert isinstance(model, Pix2PixModel) and isinstance(model, InferenceModel)
    assert model.identity == model_identity(tiny_generator)  # what tiles' caches knew it by
    tiles = np.random.default_rng(0).integers(0, 256, (3, 3, 256, 256), dtype=np.uint8)
    got = run_batch(model, tiles)
    with torch.no_grad():
        eager = tiny_generator(torch.from_numpy(tiles).float() / 127.5 - 1).numpy()
    assert engines_built == [tiny_generator]
    assert np.abs(got - eager).max() < 1e-5


@pytest.mark.filterwarnings("ignore::geo_pix2pix.errors.ResolutionWarning")  # a generator made in Python
def test_render_with_a_generator_runs_the_engine(tiny_generator, engines_built, make_raster, tmp_path):
    """render(model=Generator(...)) gets the engine, as a loaded checkpoint of the same weights does."""
    src = make_raster(300, 280)
    render(src, tmp_path / "module.tif", model=tiny_generator, overlap=32)
    assert engines_built == [tiny_generator]
    weights = save_checkpoint(tmp_path / "g.pt", tiny_generator)
    render(src, tmp_path / "file.tif", model=weights, overlap=32)
    with rasterio.open(tmp_path / "module.tif") as a, rasterio.open(tmp_path / "file.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_precision_applies_to_generators_and_checkpoints(tiny_generator, tmp_path):
    assert resolve_model(tiny_generator, precision="bf16").precision == "bf16"
    loaded = load_model(save_checkpoint(tmp_path / "g.pt", tiny_generator))
    bf16 = resolve_model(loaded, precision="bf16")
    assert bf16.precision == "bf16" and bf16.generator is loaded.generator and loaded.precision == "fp32"
    assert bf16.identity == f"{loaded.identity}-bf16"
    assert resolve_model(loaded) is loaded
    with pytest.raises(OptionError, match="precision 'bf16' applies to geo-pix2pix generators"):
        resolve_model(nn.Identity(), precision="bf16")
    with pytest.raises(OptionError, match="'fp16' is not one of"):
        ModelSpec.of(None, precision="fp16")


def test_other_modules_get_the_facts_they_declare():
    plain = resolve_model(nn.Identity())
    assert isinstance(plain, PlainModel) and isinstance(plain, InferenceModel)
    assert (plain.ground_resolution, plain.tile_multiple, plain.precision, plain.provenance) == (None, 1, "fp32", {})
    assert plain.identity == model_identity(nn.Identity())
    copy = CopyModel()
    assert resolve_model(copy) is copy  # it declares every fact itself


def test_a_spec_names_the_model_for_workers(tiny_generator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = save_checkpoint(tmp_path / "g.pt", tiny_generator)
    spec = ModelSpec.of("g.pt", "auto", "bf16")
    assert spec == ModelSpec(str(weights), None, "bf16")  # absolute: workers have their own folder
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert ModelSpec.of(spec, "cpu") == ModelSpec(str(weights), "cpu", "bf16")
    assert spec.load().precision == "bf16"
    # A module is pickled once, however many workers get it, and unpickled there.
    module_spec = ModelSpec.of(tiny_generator)
    sent = pickle.dumps(module_spec)
    blob = module_spec.__dict__["_blob"]
    pickle.dumps(module_spec)
    assert module_spec.__dict__["_blob"] is blob
    worker = pickle.loads(sent)
    assert worker.module is None and worker.cache_key() == module_spec.cache_key()
    assert ModelSpec.of(worker, "cpu").load().identity == model_identity(tiny_generator)
    tiles = np.zeros((1, 3, 256, 256), np.uint8)
    assert np.array_equal(run_batch(worker.load(), tiles), run_batch(module_spec.load(), tiles))


def test_a_rewritten_weights_file_is_loaded_again(tiny_generator, tmp_path):
    path = save_checkpoint(tmp_path / "g.pt", tiny_generator)
    spec = ModelSpec.of(path)
    first = spec.cache_key()
    assert spec.cache_key() == first
    save_checkpoint(path, tiny_generator, provenance={"steps": 2})
    assert spec.cache_key() != first


def test_library_calls_leave_the_process_settings(tiny_generator):
    before = torch.backends.cudnn.benchmark
    run_batch(resolve_model(tiny_generator), np.zeros((1, 3, 256, 256), np.uint8))
    assert torch.backends.cudnn.benchmark == before
