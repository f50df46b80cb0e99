"""Two "nodes" on this machine: `python -m grpose fit` with `configs/trainer/two_nodes.yaml`
under two torchrun launchers (one process each, gloo on the CPU, rendezvous on 127.0.0.1): both
ranks end with the same weights, and rank 0 alone writes the run's one checkpoint."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import lightning as L
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RankWeights(L.Callback):
    """At the end of fit, each rank saves its method's weights and where it ran."""

    def __init__(self, out: str):
        self.out = out

    def on_train_end(self, trainer, module) -> None:
        torch.save({"method": module.method.state_dict(), "global_rank": trainer.global_rank,
                    "node_rank": trainer.node_rank, "world_size": trainer.world_size,
                    "num_nodes": trainer.num_nodes, "step": trainer.global_step},
                   os.path.join(self.out, f"rank{trainer.global_rank}.pt"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_command(node_rank: int, port: int, root: str) -> list[str]:
    configs = [a for n in ("trainer/cpu", "trainer/two_nodes", "base/tiny", "data/synthetic_tiny",
                           "method/tiny/controlnet") for a in ("--config", f"configs/{n}.yaml")]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc-per-node", "1", "--node-rank", str(node_rank), "--master-addr",
            "127.0.0.1", "--master-port", str(port), "-m", "grpose", "fit", *configs,
            f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=2",
            "--data.init_args.train.init_args.num_samples=8",
            "--data.init_args.val.init_args.num_samples=2",
            "--trainer.callbacks+=test_two_nodes.RankWeights", f"--trainer.callbacks.out={root}"]


@pytest.mark.slow
def test_two_nodes_train_the_same_weights_and_write_one_checkpoint(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    port = free_port()
    nodes = [subprocess.Popen(fit_command(k, port, str(tmp_path)), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in nodes]
    for k, (p, out) in enumerate(zip(nodes, outputs)):
        assert p.returncode == 0, f"node {k}:\n{out[-3000:]}"
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in (0, 1)]
    assert [(r["global_rank"], r["node_rank"]) for r in ranks] == [(0, 0), (1, 1)]
    assert all(r["world_size"] == 2 and r["num_nodes"] == 2 and r["step"] == 3 for r in ranks)
    zero, one = ranks[0]["method"], ranks[1]["method"]
    assert zero.keys() == one.keys() and all(torch.equal(zero[k], one[k]) for k in zero)
    checkpoints = [os.path.relpath(os.path.join(d, f), tmp_path)
                   for d, _, files in os.walk(tmp_path) for f in files if f.endswith(".ckpt")]
    assert checkpoints == [os.path.join("tiny", "main", "checkpoints", "last.ckpt")], checkpoints
    state = torch.load(tmp_path / checkpoints[0], map_location="cpu",
                       weights_only=True)["state_dict"]
    trained = {k.removeprefix("method."): v for k, v in state.items()}
    assert all(torch.equal(trained[k], zero[k]) for k in zero)
