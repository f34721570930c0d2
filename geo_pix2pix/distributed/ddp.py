"""Data-parallel training under ``torchrun``: DistributedDataParallel, one process per device.

``torchrun --nproc_per_node N -m geo_pix2pix train DATA OUT …`` starts N copies of the
command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
in their environment (``--nnodes``/``--rdzv-endpoint`` for several machines, see
``docs/scaling.md``). :class:`~geo_pix2pix.train.trainer.Trainer` reads them with
:func:`from_env`; without them (or with one process) nothing here is used. Under
torchrun, following PyTorch's DDP recipe:

- each process joins the process group (NCCL on CUDA, Gloo on the CPU) and trains on
  ``cuda:LOCAL_RANK`` (or the CPU);
- the generator and discriminator are wrapped in ``DistributedDataParallel``: gradients
  are averaged across processes, so every replica takes the same optimiser step; batch
  norm becomes ``SyncBatchNorm`` on CUDA (instance norm needs nothing);
- each process samples from its own share of the training tiles with its own random
  stream (:func:`shard`, :func:`rank_seed`): a step sees ``WORLD_SIZE × batch_size`` tiles;
- only rank 0 writes checkpoints, metrics and samples; its checkpoints hold the plain
  (unwrapped) networks, so they load and resume in a single process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import DeviceError
from ..model.devices import resolve_device

log = logging.getLogger(__name__)

__all__ = ["DistEnv", "barrier", "from_env", "mean_across", "rank_seed", "setup", "shard", "teardown", "wrap"]


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env(environ: Mapping[str, str] = os.environ) -> DistEnv | None:
    """The torchrun job this process belongs to, or None when run alone (or as 1 of 1)."""
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in environ:
        return None
    rank = int(environ["RANK"])
    return DistEnv(rank, world, int(environ.get("LOCAL_RANK", rank)))


def setup(env: DistEnv, device: str | None) -> torch.device:
    """Join the process group (unless already joined); return this process's device."""
    import torch.distributed as dist

    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise DeviceError(f"distributed training runs on CUDA (NCCL) or the CPU (Gloo), not {dev.type}: "
                          "pass --device cuda or --device cpu")
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
        log.info("rank %d of %d joined the %s process group on %s", env.rank, env.world_size, backend, dev)
    return dev


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


_WARNED: list = []


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel; batch norm synchronised on CUDA."""
    from torch.nn.parallel import DistributedDataParallel

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if has_bn and device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(module)  # in place below the root; same parameters
    elif has_bn and not _WARNED:
        # SyncBatchNorm needs CUDA: on the CPU each process normalises its own batch and
        # DDP copies rank 0's running statistics to the others at every forward.
        log.warning("batch norm is not synchronised across processes on the CPU (SyncBatchNorm needs CUDA)")
        _WARNED.append(True)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def shard(indices: Sequence[int], env: DistEnv | None) -> list[int]:
    """This rank's share of the training tiles (every ``world_size``-th), as
    ``DistributedSampler`` splits them; all of them when there are fewer than ranks."""
    if env is None:
        return list(indices)
    if len(indices) < env.world_size:
        log.warning("%d training tiles for %d processes: every process samples from all of them",
                    len(indices), env.world_size)
        return list(indices)
    return list(indices[env.rank :: env.world_size])


def rank_seed(seed: int, env: DistEnv | None, *salt: int) -> int:
    """The seed of this rank's random streams: ``seed`` itself on rank 0 (a one-process
    run is unchanged), a distinct stream derived from (seed, rank, salt…) elsewhere."""
    if env is None or (env.rank == 0 and not salt):
        return seed
    return int(np.random.SeedSequence([seed, env.rank, *salt]).generate_state(1)[0])


def mean_across(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all processes (every process must call this)."""
    import torch.distributed as dist

    if not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
