"""Data-parallel Multirate with gloo and 2 processes on the CPU: the iterates equal one process on the
same global minibatch, and a fast step all-reduces only the fast part's gradients."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from experiments.core.runner import run
from multirate import Multirate, TrainStep, partition
from multirate.distributed import AllReduceGrads, world
from tests.helpers import MULTIRATE, Blobs, make_cfg

WORLD = 2
K = 3
STEPS = 7  # slow steps at 0, 3, 6


class Blobs2(Blobs):
    """The runner tests' task without dropout, whose masks would differ between 1 and 2 processes."""

    def build_model(self):
        model = super().build_model()
        model.body[2] = nn.Identity()
        return model


def mlp():
    torch.manual_seed(0)
    return nn.ModuleDict(dict(body=nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh()),
                              fc=nn.Linear(32, 4)))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 16, 8, generator=g), torch.randint(0, 4, (STEPS, 16), generator=g)


def train(model, x, y, step):
    """STEPS multirate steps; the parameters after each step."""
    iterates = []
    for t in range(STEPS):
        step(lambda: F.cross_entropy(model["fc"](model["body"](x[t])), y[t]))
        iterates.append([p.detach().clone() for p in model.parameters()])
    return iterates


def make_step(model, reduce_grads=None):
    opt = Multirate(partition.layerwise(model, fast=["fc"]), lr=0.1, k=K, momentum=0.9, weight_decay=1e-3)
    return TrainStep(model, opt, reduce_grads=reduce_grads)


def worker(rank, store, out, results_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    sent = []  # bytes of every all_reduce, counted where torch.distributed is called
    all_reduce = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        sent.append(tensor.numel() * tensor.element_size())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        # 1. TrainStep + AllReduceGrads: this rank's half of each minibatch of 16.
        model = mlp()
        reducer = AllReduceGrads()
        x, y = data()
        half = slice(rank * 8, (rank + 1) * 8)
        steps = []
        step = make_step(model, reducer)
        iterates = []
        for t in range(STEPS):
            before = len(sent)
            step(lambda: F.cross_entropy(model["fc"](model["body"](x[t, half])), y[t, half]))
            iterates.append([p.detach().clone() for p in model.parameters()])
            steps.append(dict(sent=sent[before:], counted=reducer.last_bytes))
        # 2. The runner: the same run as one process, with batch_size the global minibatch.
        result = run(make_cfg(results_dir, epochs=2, **MULTIRATE), Blobs2())
        torch.save(dict(iterates=iterates, steps=steps, world=world(), status=result["status"],
                        state=result["model"].state_dict(), rows=result["rows"]), f"{out}/rank{rank}.pt")
        # The ranks leave together: a rank that tore its process group down while the other was still
        # in it once aborted the other in CI ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(tmp / "store"), str(tmp), tmp / "results"), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], tmp / "results"


def test_iterates_equal_one_process_on_the_global_batch(ranks):
    outs, _ = ranks
    model = mlp()
    x, y = data()
    expected = train(model, x, y, make_step(model))
    assert [o["world"] for o in outs] == [(0, WORLD), (1, WORLD)]
    for o in outs:
        for t in range(STEPS):
            for got, want in zip(o["iterates"][t], expected[t]):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fast_steps_send_only_the_fast_gradients(ranks):
    outs, _ = ranks
    model = mlp()
    fast = 4 * sum(p.numel() for p in model["fc"].parameters())
    every = 4 * sum(p.numel() for p in model.parameters())
    assert fast == 4 * (32 * 4 + 4) and every == 4 * (8 * 32 + 32 + 32 * 32 + 32) + fast
    for o in outs:
        expected = [every if t % K == 0 else fast for t in range(STEPS)]
        assert [s["sent"] for s in o["steps"]] == [[b] for b in expected]  # one bucket per step
        assert [s["counted"] for s in o["steps"]] == expected


def test_runner_under_two_processes_equals_one(ranks, tmp_path):
    outs, results_dir = ranks
    single = run(make_cfg(tmp_path, epochs=2, **MULTIRATE), Blobs2())
    assert [o["status"] for o in outs] == ["complete", "complete"]
    for o in outs:
        for name, value in single["model"].state_dict().items():
            torch.testing.assert_close(o["state"][name], value, rtol=1e-5, atol=1e-6)
    # Only rank 0 logs; its rows are one process's to float tolerance (train_loss averaged over ranks).
    assert outs[1]["rows"] == []
    got, want = outs[0]["rows"], single["rows"]
    assert [(r["epoch"], r["metric"]) for r in got] == [(r["epoch"], r["metric"]) for r in want]
    values = [torch.tensor([r["value"] for r in rows]) for rows in (got, want)]
    torch.testing.assert_close(*values, rtol=1e-5, atol=1e-6)
    cfg = make_cfg(results_dir, epochs=2, **MULTIRATE)
    assert json.loads((cfg.run_dir / f"{cfg.run_name}.json").read_text())["status"] == "complete"


def test_batch_must_split_evenly(monkeypatch, tmp_path):
    monkeypatch.setattr("experiments.core.runner.world", lambda: (0, 3))
    with pytest.raises(ValueError, match="batch_size=32 is not divisible by the 3 processes"):
        run(make_cfg(tmp_path), Blobs2())
