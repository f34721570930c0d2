"""One way to name a model, and one resolver: :class:`ModelSpec` and :func:`resolve_model`.

A model is named by a weights file (``None``: the default model shipped in the package)
or a module, a device and a precision. Every caller (the CLI, :func:`render.render`,
``tiles``, ``serve``, QGIS, evaluate) resolves it here into an
:class:`~geo_pix2pix.model.load.InferenceModel`. A spec pickles, so it is also what worker
processes get (Dask workers, ``tiles``' process pool): a file is loaded there from its
path (which every worker must be able to open), a module is pickled once here. Each
worker process keeps the model it made (:func:`geo_pix2pix.distributed.cluster.worker_model`).
"""

from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .load import InferenceModel

__all__ = ["ModelLike", "ModelSpec", "resolve_model"]


@dataclass(frozen=True)
class ModelSpec:
    """Which model (``path``, or ``module`` when set), on which ``device`` (None: auto), at
    which ``precision`` (None: the model's own; a weights file's is fp32)."""

    path: str | None = None
    device: str | None = None
    precision: str | None = None
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    token: str = field(default="", repr=False)  # a module's name in the worker cache

    @classmethod
    def of(cls, model: ModelLike = None, device: str | None = None, precision: str | None = None) -> ModelSpec:
        """A spec for a weights path, None (the default model), a module or a spec; ``device``
        and ``precision``, where given, replace the spec's own."""
        from .load import _check_precision

        if precision is not None:
            _check_precision(precision)
        device = None if device in (None, "auto") else str(device)
        if isinstance(model, ModelSpec):
            spec = replace(model, device=device or model.device, precision=precision or model.precision)
            if "_blob" in model.__dict__:  # a spec unpickled in a worker
                object.__setattr__(spec, "_blob", model.__dict__["_blob"])
            return spec
        if model is None or isinstance(model, (str, os.PathLike)):
            # Absolute: workers have their own working folder.
            path = None if model is None else os.path.abspath(os.fspath(model))
            return cls(path, device, precision)
        return cls(None, device, precision, module=model, token=uuid.uuid4().hex)

    def load(self) -> InferenceModel:
        """The model this spec names, loaded, unpickled or adapted (:func:`model.as_inference_model`)."""
        from .load import as_inference_model, load_model

        module = self.module
        if module is None and self.token:
            module = pickle.loads(self.__dict__["_blob"])
        if module is None:
            return as_inference_model(load_model(self.path, self.device, self.precision or "fp32"))
        return as_inference_model(module, self.device, self.precision)

    def cache_key(self) -> tuple:
        """What a worker's cached model is known by: a weights file rewritten since is loaded again."""
        key: tuple = (self.token,)
        if not self.token:
            from .load import default_model_path

            path = self.path or str(default_model_path())
            try:
                st = os.stat(path)
                key = (path, st.st_mtime_ns, st.st_size)
            except OSError:
                key = (path,)  # load() says what is wrong
        return ("model", *key, self.device, self.precision)

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k != "module"}
        if self.module is not None and "_blob" not in self.__dict__:
            # Pickled once, however many workers get the spec. Dask always brings
            # cloudpickle: it pickles classes defined in __main__ or a notebook.
            try:
                import cloudpickle as dumper
            except ImportError:
                dumper = pickle
            object.__setattr__(self, "_blob", dumper.dumps(self.module))
            state["_blob"] = self.__dict__["_blob"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, module=None)


#: What callers may pass as a model.
ModelLike = nn.Module | str | os.PathLike | ModelSpec | None


def resolve_model(model: ModelLike = None, device: str | None = None, precision: str | None = None) -> InferenceModel:
    """The :class:`~geo_pix2pix.model.load.InferenceModel` that ``model`` names (see :meth:`ModelSpec.of`)."""
    return ModelSpec.of(model, device, precision).load()
