"""experiments.datasets.pretraining: the shared pretraining loop and the cache of pretrained networks."""

import io
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.core.files import sha256_bytes
from experiments.datasets import pretrained_cache, pretraining


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
        pretrained_cache.write_cache(folder / "pretrained" / name, text.encode())

    cache(tmp_path / "quick" / "transfer", "a.pt", "a")
    cache(tmp_path / "ablations" / "k" / "quick" / "transfer", "b.pt", "b")
    cache(tmp_path / "ablations" / "fast" / "quick" / "transfer", "e.pt", "e")
    (tmp_path / "ablations" / "fast" / "quick" / "transfer" / "pretrained" / "e.pt").write_text("damaged")
    cache(tmp_path / "paper" / "transfer", "c.pt", "other profile")
    cache(tmp_path / "quick" / "patch", "d.pt", "other experiment")
    target = tmp_path / "ablations" / "drift" / "quick" / "transfer"
    cache(target, "b.pt", "kept")
    copied = pretraining.share_caches(target, tmp_path)
    assert copied == [target / "pretrained" / "a.pt"]  # not the damaged e.pt
    assert sorted(p.name for p in (target / "pretrained").glob("*.pt")) == ["a.pt", "b.pt"]
    assert (target / "pretrained" / "b.pt").read_text() == "kept"
    assert pretrained_cache.recorded_digest(target / "pretrained" / "a.pt") == sha256_bytes(b"a")
    assert pretraining.share_caches(target, tmp_path) == []


# ----------------------------------------------------------------------------- verified caches

def _counting_pretrain(calls):
    def pretrain():
        calls.append(1)
        return {"state_dict": {"w": torch.arange(1000.0)}, "accuracy": 50.0}
    return pretrain


def test_a_cache_is_written_with_its_sha256_in_sha256sum_format(tmp_path):
    path = tmp_path / "pretrained" / "x.pt"
    pretraining.cached(path, _counting_pretrain([]))
    digest_file = pretrained_cache.digest_path(path)
    assert digest_file.name == "x.pt.sha256"
    assert digest_file.read_text() == f"{sha256_bytes(path.read_bytes())}  x.pt\n"


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _flip_a_weight_bit(path):
    data = bytearray(path.read_bytes())
    at = data.index(torch.arange(1000.0)[700:701].numpy().tobytes())  # inside the tensor's storage
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _forget_the_digest(path):
    pretrained_cache.digest_path(path).unlink()


def _garbage(path):
    path.write_bytes(b"not a torch file")
    pretrained_cache.digest_path(path).write_text(f"{sha256_bytes(b'not a torch file')}  x.pt\n")


@pytest.mark.parametrize("damage, problem", [
    (_truncate, "is damaged: its SHA-256 is not the one recorded in x.pt.sha256"),
    (_flip_a_weight_bit, "is damaged: its SHA-256 is not the one recorded in x.pt.sha256"),
    (_forget_the_digest, "has no recorded SHA-256"),
    (_garbage, "cannot be loaded"),
])
def test_a_damaged_cache_is_reported_in_one_line_and_built_again(tmp_path, capsys, damage, problem):
    """A truncated cache gave a torch traceback; one with flipped bits in its weights was fine-tuned
    from without a word. Now each is named in one line and never used."""
    path, calls = tmp_path / "pretrained" / "x.pt", []
    pretraining.cached(path, _counting_pretrain(calls))
    capsys.readouterr()
    damage(path)
    result = pretraining.cached(path, _counting_pretrain(calls))
    assert calls == [1, 1] and torch.equal(result["state_dict"]["w"], torch.arange(1000.0))
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"{path}: {problem}" + lines[0].partition(problem)[2]]
    assert lines[0].endswith("; not used, building it again")
    assert pretraining.cached(path, _counting_pretrain(calls))["accuracy"] == 50.0 and calls == [1, 1]


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A shipped-networks folder with one network, x.pt."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.full((3,), 7.0)}}, buffer)
    (folder / "x.pt").write_bytes(buffer.getvalue())
    manifest = {"files": [dict(file="x.pt", what="test", sha256=sha256_bytes(buffer.getvalue()),
                               bytes=len(buffer.getvalue()))]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(pretrained_cache, "SHIPPED_DIR", folder)
    monkeypatch.setattr(pretrained_cache, "SHIPPED_MANIFEST", folder / "manifest.json")
    return folder


def test_a_shipped_network_of_the_same_key_is_used_instead_of_pretraining(tmp_path, shipped, capsys):
    calls = []
    path = tmp_path / "results" / "pretrained" / "x.pt"
    result = pretraining.cached(path, _counting_pretrain(calls))
    assert calls == [] and torch.equal(result["state_dict"]["w"], torch.full((3,), 7.0))
    assert path.read_bytes() == (shipped / "x.pt").read_bytes()
    assert f"{path}: copied from the shipped shipped/x.pt (SHA-256 verified)" in capsys.readouterr().err
    other = tmp_path / "results" / "pretrained" / "y.pt"  # another key: pretrained as before
    assert pretraining.cached(other, _counting_pretrain(calls))["accuracy"] == 50.0 and calls == [1]
    with pretrained_cache.pretraining_forced():  # make pretrain: never the shipped one
        pretraining.cached(tmp_path / "forced" / "x.pt", _counting_pretrain(calls))
    assert calls == [1, 1]


def test_a_damaged_shipped_network_is_named_and_not_used(tmp_path, shipped, capsys):
    _truncate(shipped / "x.pt")
    calls = []
    result = pretraining.cached(tmp_path / "pretrained" / "x.pt", _counting_pretrain(calls))
    assert calls == [1] and result["accuracy"] == 50.0
    err = capsys.readouterr().err
    assert f"{shipped / 'x.pt'} is damaged: its SHA-256 is not the one in manifest.json" in err


def test_a_downloaded_weights_file_is_checked_against_the_sha256_prefix_in_its_name(tmp_path):
    """torch.hub checks the prefix (``resnet50-11ad3fa6.pth``) when it downloads the file only."""
    from experiments.core.errors import UserError

    data = b"the weights"
    intact = tmp_path / f"resnet34-{sha256_bytes(data)[:8]}.pth"
    intact.write_bytes(data)
    pretrained_cache.check_hub_weights(intact)
    pretrained_cache.check_hub_weights(tmp_path / "resnet50-11ad3fa6.pth")  # not there: downloaded, checked
    damaged = tmp_path / "resnet50-11ad3fa6.pth"
    damaged.write_bytes(data)
    with pytest.raises(UserError) as err:
        pretrained_cache.check_hub_weights(damaged)
    assert str(err.value) == (f"{damaged} is damaged: its SHA-256 does not start with the 11ad3fa6 in its "
                              "name; delete it, and it is downloaded again on the next run")


def test_different_tensors_compares_bits():
    a = {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(3)}
    assert pretrained_cache.different_tensors(a, {k: v.clone() for k, v in a.items()}) == []
    assert pretrained_cache.different_tensors(a, {**a, "w": torch.tensor([-0.0, 1.0])}) == ["w"]  # == holds
    assert pretrained_cache.different_tensors(a, {"w": a["w"]}) == ["n"]
    assert pretrained_cache.different_tensors(a, {**a, "w": a["w"].double()}) == ["w"]


# ----------------------------------------------------------------------------- the shipped networks

def _quick_cache_paths(results_dir):
    from experiments import transfer, transfer_text
    from experiments.core.config import experiment_config, list_methods, load_config

    paths, of = [], {transfer: transfer.pretrained_path, transfer_text: transfer_text.pretrain_path}
    for module, path_of in of.items():
        cls, toml = experiment_config(module)
        for profile in ("quick", "cpu"):
            cfg = load_config(cls, toml, profile, list_methods(toml)[0], [f"results_dir={results_dir}"])
            paths.append(path_of(cfg))
    return paths


def test_the_shipped_networks_are_the_ones_the_quick_profile_needs_and_are_intact(tmp_path):
    """The quick (and cpu) profile's two pretrained networks are shipped under the keys the code
    computes now, small, with their manifest's SHA-256. A change to the code that produces them
    changes a key: then `make pretrain` rebuilds them and says whether the weights changed."""
    entries = pretrained_cache.shipped()
    needed = {path.name for path in _quick_cache_paths(tmp_path)}
    assert needed == set(entries), "the shipped networks are stale: run `make pretrain`"
    for name, entry in entries.items():
        data = (pretrained_cache.SHIPPED_DIR / name).read_bytes()
        assert len(data) == entry["bytes"] <= pretrained_cache.SHIPPED_MAX_BYTES
        assert sha256_bytes(data) == entry["sha256"]


@pytest.mark.slow
def test_make_pretrain_rebuilds_the_shipped_networks_to_the_bit():
    """`make pretrain --check`: pretraining again gives the shipped weights, bit for bit (~4 min), on
    a CPU of the vendor they were built on (MKL rounds differently on the other)."""
    from experiments.core import determinism

    if pretrained_cache.built_on_vendor() != determinism.cpu_vendor():
        pytest.skip(f"the shipped networks were built on {pretrained_cache.built_on_vendor()} CPUs, "
                    f"this one is {determinism.cpu_vendor()}'s")
    done = subprocess.run([sys.executable, "-m", "experiments.datasets.pretrained_cache", "--check"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("weights bit-identical to the shipped ones") == 2
    assert "copied from the shipped" not in done.stderr  # pretrained, not the shipped files themselves


def test_make_pretrain_compares_bits_and_keys_then_ships(tmp_path, shipped, monkeypatch, capsys):
    """`make pretrain` on stand-in networks: the same weights are "bit-identical" (and the shipped
    bytes are kept); other weights or another key are reported, and --check then exits with 1."""
    weights = {"w": torch.full((3,), 7.0)}

    def networks(results_dir):
        path = Path(results_dir) / "pretrained" / "x.pt"

        def build():
            return pretraining.cached(path, lambda: {"state_dict": dict(weights), "seconds": time.time()})
        return [("test", path, build)]

    monkeypatch.setattr(pretrained_cache, "_shipped_networks", networks)
    shipped_bytes = (shipped / "x.pt").read_bytes()
    assert pretrained_cache.main(["--check"]) == 0
    assert "test: x.pt: weights bit-identical to the shipped ones" in capsys.readouterr().out
    assert pretrained_cache.main([]) == 0 and (shipped / "x.pt").read_bytes() == shipped_bytes

    weights["w"] = torch.full((3,), 7.5)
    assert pretrained_cache.main(["--check"]) == 1
    assert "weights DIFFER from the shipped ones in 1 tensors: ['w']" in capsys.readouterr().out
    assert pretrained_cache.main([]) == 0  # ships the new weights and their digest
    (entry,) = json.loads((shipped / "manifest.json").read_text())["files"]
    assert entry["sha256"] == sha256_bytes((shipped / "x.pt").read_bytes()) != sha256_bytes(shipped_bytes)
    assert pretrained_cache.main(["--check"]) == 0


def test_make_pretrain_ships_only_on_the_vendor_the_networks_were_built_on(tmp_path, shipped, monkeypatch,
                                                                          capsys):
    """Rebuilt on another vendor's CPU the networks differ in their bits: shipping them would change
    every transfer run's starting point. Comparing (--check) is allowed; the manifest records the
    vendor that built what it lists."""
    from experiments.core import determinism
    from experiments.core.errors import UserError

    def networks(results_dir):
        path = Path(results_dir) / "pretrained" / "x.pt"
        weights = {"state_dict": {"w": torch.full((3,), 7.0)}}
        return [("test", path, lambda: pretraining.cached(path, lambda: weights))]

    monkeypatch.setattr(pretrained_cache, "_shipped_networks", networks)
    monkeypatch.setattr(determinism, "cpu_vendor", lambda: "amd")
    assert pretrained_cache.main([]) == 0
    assert json.loads((shipped / "manifest.json").read_text())["cpu_vendor"] == "amd"
    monkeypatch.setattr(determinism, "cpu_vendor", lambda: "intel")
    before = (shipped / "manifest.json").read_bytes()
    refusal = r"manifest.json: the shipped networks were built on amd CPUs and this one is intel's.*CHECK=1"
    with pytest.raises(UserError, match=refusal):
        pretrained_cache.main([])
    assert (shipped / "manifest.json").read_bytes() == before
    assert pretrained_cache.main(["--check"]) == 0
