"""Data-parallel training under torchrun (2 Gloo processes on the CPU), resumed in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from test_train import TINY_D, TINY_G, config, make_pairs

from geo_pix2pix import load_model
from geo_pix2pix.distributed import ddp
from geo_pix2pix.model.checkpoints import load_checkpoint
from geo_pix2pix.train.data import SideBySideFolder
from geo_pix2pix.train.trainer import Trainer

#: The train command, each rank also keeping its networks after training (only rank 0 writes checkpoints).
EACH_RANK = """\
import os

import torch

from geo_pix2pix.cli.main import main
from geo_pix2pix.train.trainer import Trainer

fit = Trainer.fit


def fit_and_keep(self, *args, **kwargs):
    final = fit(self, *args, **kwargs)
    states = {"G": self.G.state_dict(), "D": self.D.state_dict()}
    torch.save(states, os.path.join(os.environ["RANK_STATES"], f"{self.dist.rank}.pt"))
    return final


Trainer.fit = fit_and_keep
main(prog_name="geo-pix2pix")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_train_and_the_checkpoint_resumes_in_one(tmp_path):
    data = make_pairs(tmp_path / "d")
    run, ranks = tmp_path / "run", tmp_path / "ranks"
    ranks.mkdir()
    script = tmp_path / "train_each_rank.py"
    script.write_text(EACH_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), "-q", "train", str(data), str(run),
           "--width", "4", "--d-width", "4", "--steps", "3", "--batch-size", "1", "--load-size", "256-272",
           "--val-fraction", "0", "--device", "cpu", "--checkpoint-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", RANK_STATES=str(ranks))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr

    last = load_checkpoint(run / "last.pt")
    assert last.provenance["steps"] == 3 and last.provenance["processes"] == 2
    assert last.provenance["samples_seen"] == 6  # 2 processes × batch 1 × 3 steps
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == [3]  # rank 0 alone writes
    # Gradients are averaged, so every rank took the same steps: rank 0's checkpoint holds every rank's weights.
    states = [torch.load(ranks / f"{r}.pt", weights_only=True) for r in range(2)]
    for net, saved in (("G", last.generator_state), ("D", last.discriminator_state)):
        for state in states:
            assert state[net].keys() == saved.keys()
            assert all(torch.equal(state[net][k], v) for k, v in saved.items()), net

    # The checkpoint holds the plain networks: one process resumes it and goes on.
    t = Trainer(SideBySideFolder(data), run, config(steps=4, batch_size=1, load_size=(256, 272)), TINY_G, TINY_D)
    assert t.dist is None and t.main
    t.resume(run / "last.pt")
    assert t.state.step == 3
    t.fit()
    assert t.state.step == 4
    model = load_model(run / "model.pt")
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 256, 256))
    assert out.shape == (1, 3, 256, 256) and torch.isfinite(out).all()


def test_torchrun_environment():
    assert ddp.from_env({}) is None
    assert ddp.from_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None  # one process: plain
    env = ddp.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == ddp.DistEnv(3, 4, 1) and not env.main
    assert ddp.shard(list(range(10)), env) == [3, 7]
    assert ddp.shard([0, 1], env) == [0, 1]  # fewer tiles than processes: all of them
    assert ddp.rank_seed(5, None) == ddp.rank_seed(5, ddp.DistEnv(0, 4, 0)) == 5
    assert len({ddp.rank_seed(5, ddp.DistEnv(r, 4, r)) for r in range(4)}) == 4
