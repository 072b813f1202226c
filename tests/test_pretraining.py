"""experiments.pretraining: the shared pretraining loop and the cache of pretrained networks."""

import multiprocessing
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments import pretraining


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, generator=g), torch.randint(0, 2, (40,), generator=g)
    return model, opt, sched, x, y


@pytest.mark.parametrize("every, clip", [("epoch", None), ("step", 0.5)])
def test_fit_is_the_hand_written_loop_to_the_bit(every, clip):
    model, opt, sched, x, y = _setup()
    model.train()
    for _ in range(3):  # the loop as transfer._pretrain and transfer_text.pretrain wrote it
        for idx in torch.arange(40).split(8):
            a = F.cross_entropy(model(x[idx]), y[idx])
            b = model(x[idx]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            (a + b).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if every == "step":
                sched.step()
        if every == "epoch":
            sched.step()
    model.eval()
    expected = model.state_dict()

    model, opt, sched, x, y = _setup()
    seen = []
    pretraining.fit(model, opt, (torch.arange(40).split(8) for _ in range(3)),
                    lambda m, idx: {"ce": F.cross_entropy(m(x[idx]), y[idx]), "l2": m(x[idx]).pow(2).mean()},
                    schedule=sched, schedule_every=every, clip_grad_norm=clip,
                    on_step=lambda step, losses: seen.append((step, sorted(losses))))
    assert not model.training
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())
    assert seen == [(s, ["ce", "l2"]) for s in range(1, 16)]


def test_fit_rejects_an_unknown_schedule_period():
    model, opt, sched, _, _ = _setup()
    with pytest.raises(ValueError, match="schedule_every='batch'"):
        pretraining.fit(model, opt, [], lambda m, b: {}, schedule=sched, schedule_every="batch")


def test_cache_path_is_the_hash_of_the_spec(tmp_path):
    a = pretraining.cache_path(tmp_path, {"b": 1, "a": [2]})
    assert a == pretraining.cache_path(tmp_path, {"a": [2], "b": 1})  # key order does not matter
    assert a.parent == tmp_path / "pretrained" and len(a.stem) == 16
    assert pretraining.cache_path(tmp_path, {"a": [2], "b": 2}) != a
    assert pretraining.cache_path(tmp_path, {}, prefix="net-", digits=12).name.startswith("net-")


def test_cached_pretrains_once(tmp_path):
    calls = []

    def pretrain():
        calls.append(1)
        return {"state_dict": {"w": torch.arange(3.0)}, "accuracy": 50.0}

    path = tmp_path / "pretrained" / "x.pt"
    first = pretraining.cached(path, pretrain)
    second = pretraining.cached(path, pretrain)
    assert calls == [1] and path.exists() and second["accuracy"] == 50.0
    assert torch.equal(first["state_dict"]["w"], second["state_dict"]["w"])


def _slow_pretrain_in_a_child(path, log):
    def pretrain():
        with open(log, "a") as f:
            f.write("pretrained\n")
        time.sleep(1.0)  # the other process asks for the cache meanwhile
        return {"state_dict": {"w": torch.arange(3.0)}}

    pretraining.cached(path, pretrain)


def test_processes_that_need_the_same_network_at_once_pretrain_it_once(tmp_path):
    path, log = tmp_path / "pretrained" / "x.pt", tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_slow_pretrain_in_a_child, args=(path, log)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0]
    assert log.read_text() == "pretrained\n"  # once: the second waited for the first's file
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.arange(3.0))


def test_share_caches_copies_only_what_is_missing_for_the_same_profile_and_experiment(tmp_path):
    def cache(folder, name, text):
        (folder / "pretrained").mkdir(parents=True, exist_ok=True)
        (folder / "pretrained" / name).write_text(text)

    cache(tmp_path / "quick" / "transfer", "a.pt", "a")
    cache(tmp_path / "ablations" / "k" / "quick" / "transfer", "b.pt", "b")
    cache(tmp_path / "paper" / "transfer", "c.pt", "other profile")
    cache(tmp_path / "quick" / "patch", "d.pt", "other experiment")
    target = tmp_path / "ablations" / "drift" / "quick" / "transfer"
    cache(target, "b.pt", "kept")
    copied = pretraining.share_caches(target, tmp_path)
    assert copied == [target / "pretrained" / "a.pt"]
    assert sorted(p.name for p in (target / "pretrained").iterdir()) == ["a.pt", "b.pt"]
    assert (target / "pretrained" / "b.pt").read_text() == "kept"
    assert pretraining.share_caches(target, tmp_path) == []
