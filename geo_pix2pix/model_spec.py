"""How worker processes get the model: :class:`ModelSpec`.

``render`` and ``tiles`` run the model in other processes: Dask workers
(:mod:`render_cluster`, :mod:`tiles.cluster`) and ``tiles``' local process pool
(:mod:`tiles.workers`). A spec travels to them instead of the module: a model loaded
from a weights file is loaded there from the same file (which every worker must be
able to open), any other module is pickled once here and unpickled there. Each worker
process keeps the model it made (:meth:`ModelSpec.load_cached`), so it is made once per
process, not once per task.
"""

from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import dataclass, field

from torch import nn

from .cluster import worker_cached

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """How a worker gets the model: from the weights file ``path`` (None: the shipped
    default) or, when ``blob`` is set, by unpickling the module pickled in it."""

    key: str  # the worker cache's key: the weights' hash, or a token of the pickled module
    path: str | None = None
    blob: bytes | None = field(default=None, repr=False)
    device: str | None = None

    @classmethod
    def of_file(cls, path: str | os.PathLike | None, model: nn.Module, device: str | None = None) -> ModelSpec:
        """The weights file ``path`` (None: the default model) that ``model`` was loaded from."""
        from .model import default_model_path

        path = None if path is None else os.path.abspath(os.fspath(path))  # workers have their own folder
        return cls(getattr(model, "identity", "") or str(path or default_model_path()), path, device=device)

    @classmethod
    def of_module(cls, module: nn.Module, device: str | None = None) -> ModelSpec:
        """``module``, pickled once here (a large model is not pickled again per worker or task)."""
        try:  # Dask always brings cloudpickle: it pickles classes defined in __main__ or a notebook
            import cloudpickle as dumper
        except ImportError:
            dumper = pickle
        return cls(f"pickled-{uuid.uuid4().hex}", blob=dumper.dumps(module), device=device)

    def load(self) -> nn.Module:
        """The model in eval mode, on ``device`` where one is set: loaded or unpickled anew."""
        if self.blob is None:
            from .model import load_model

            return load_model(self.path, self.device)
        module = pickle.loads(self.blob)
        if self.device is not None:
            from .devices import resolve_device

            module.to(resolve_device(self.device))
        return module.eval()

    def load_cached(self) -> nn.Module:
        """:meth:`load`, once per worker process (:func:`cluster.worker_cached`)."""
        return worker_cached(("model", self.key, self.device), self.load)
