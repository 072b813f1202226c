"""The speed-up benchmark on tiny settings: schema, positive times, the limit formula."""

import json
import os
import platform
import re
import statistics
import sys

import pytest
import torch

from benchmarks.speedup import METHODS, Settings, benchmark, limit, main, optimizer_benchmark, report

TINY_BERT = dict(vocab_size=50, dim=16, hidden_dim=32, n_layers=1, n_heads=2, max_position_embeddings=16)
KEYS = {"model", "device", "image_size", "seq_len", "batch_size", "k", "steps", "repeats", "threads",
        "torch", "methods", "speedup", "head_only_speedup", "F", "B", "f", "b", "phases", "limit",
        "fraction_of_limit"}


def check(r, s):
    assert KEYS <= r.keys()
    assert (r["model"], r["k"], r["steps"], r["repeats"]) == (s.model, s.k, s.steps, s.repeats)
    assert set(r["methods"]) == set(METHODS)
    for m in r["methods"].values():
        assert len(m["all"]) == s.repeats and all(t > 0 for t in m["all"])
        assert min(m["all"]) <= m["s_per_step"] <= max(m["all"])
    assert all(r[key] > 0 for key in ("speedup", "head_only_speedup", "F", "B", "b", "limit"))
    # The paper's formula with the fast step's own forward f (f = F gives k(F+B) / (kF + B + (k-1)b)).
    assert r["limit"] == pytest.approx(r["k"] * (r["F"] + r["B"])
                                       / (r["F"] + r["B"] + (r["k"] - 1) * (r["f"] + r["b"])))
    assert r["limit"] == pytest.approx(limit(r["k"], r["F"], r["B"], r["b"], r["f"]))
    for name in ("F", "B", "f", "b"):  # the phases of the same interleaved repeats, median of them
        assert len(r["phases"][name]) == s.repeats
        assert r[name] == pytest.approx(statistics.median(r["phases"][name]))
    assert r["speedup"] == pytest.approx(r["methods"]["train_all"]["s_per_step"]
                                         / r["methods"]["multirate"]["s_per_step"])
    assert r["fraction_of_limit"] == pytest.approx(r["speedup"] / r["limit"])
    kinds = {"train_all", "multirate slow", "multirate fast", "head_only"}
    steps, optimizer_steps = r["per_call"]["steps"], r["per_call"]["optimizer_steps"]
    assert set(steps) == set(optimizer_steps) == kinds
    for kind in kinds:  # each optimizer.step() runs inside its step, so the medians keep the order
        assert 0 < optimizer_steps[kind] <= steps[kind]
    assert set(r["per_call"]["page_faults"]) == kinds and min(r["per_call"]["page_faults"].values()) >= 0
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert r["host_memory_kept"] is (glibc and os.environ.get("MULTIRATE_KEEP_HOST_MEMORY") != "0")


def test_resnet34_tiny_cli(tmp_path, capsys):
    out = tmp_path / "r.json"
    main(["--model", "resnet34", "--image-size", "16", "--batch-size", "2", "--k", "2", "--steps", "2",
          "--repeats", "2", "--threads", "1", "--json", str(out)])
    r = json.loads(out.read_text())
    check(r, Settings(model="resnet34", k=2, steps=2, repeats=2))
    assert r["threads"] == 1
    assert "multirate" in capsys.readouterr().out


@pytest.mark.parametrize("clock", ["wall", "process"])
def test_distilbert_tiny(clock):
    s = Settings(model="distilbert", seq_len=8, batch_size=2, k=3, steps=3, repeats=1, threads=1,
                 clock=clock, distilbert_config=TINY_BERT)
    r = benchmark(s)
    check(r, s)
    assert r["clock"] == clock


def test_steps_must_be_a_multiple_of_k():
    with pytest.raises(ValueError, match="multiple of k"):
        benchmark(Settings(k=3, steps=4))
    with pytest.raises(SystemExit):
        main(["--k", "3", "--steps", "4"])


def test_limit_formula():
    assert limit(1, 1.0, 2.0, 0.0) == 1.0  # k = 1: multirate is plain SGD
    assert limit(5, 1.0, 2.0, 0.0) == pytest.approx(15 / 7)  # the paper's "about 2.1x" for B = 2F
    assert limit(5, 1.0, 2.0, 2.0) == 1.0  # a head as costly as the whole backward saves nothing
    assert limit(5, 1.0, 2.0, 0.0, 1.0) == limit(5, 1.0, 2.0, 0.0)  # f = F: the paper's formula
    assert limit(5, 1.0, 2.0, 0.0, 0.5) > limit(5, 1.0, 2.0, 0.0)  # a cheaper fast forward saves more


def test_above_the_limit_is_flagged(tmp_path, capsys):
    r = main(["--model", "resnet34", "--image-size", "16", "--batch-size", "2", "--k", "2", "--steps", "2",
              "--repeats", "1", "--threads", "1"])
    r = {**r, "fraction_of_limit": 1.2}
    assert "WARNING: above 100 % of the limit" in report(r)
    r["fraction_of_limit"] = 0.9
    assert "WARNING" not in report(r)


def test_optimizer_only(tmp_path, capsys):
    out = tmp_path / "o.json"
    main(["--optimizer-only", "--steps", "10", "--repeats", "2", "--threads", "1", "--json", str(out)])
    r = json.loads(out.read_text())
    names = {"step:sgd", "step:random_subgroups", "step:layerwise", "train:sgd", "train:random_subgroups"}
    assert set(r["s_per_step"]) == names and all(len(r["all"][n]) == 2 for n in names)
    assert r["ratios"]["step:random_subgroups / step:sgd"] == pytest.approx(
        r["s_per_step"]["step:random_subgroups"] / r["s_per_step"]["step:sgd"])
    assert "train:random_subgroups / train:sgd" in capsys.readouterr().out
    with pytest.raises(ValueError, match="multiple of 10"):
        optimizer_benchmark(Settings(optimizer_only=True, steps=5))


def test_settings_from_toml(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('model = "resnet50"\nk = 2\nsteps = 4\n')
    from benchmarks.speedup import parse_args

    s = parse_args(["--config", str(cfg), "--steps", "6"])
    assert (s.model, s.k, s.steps) == ("resnet50", 2, 6)  # the command line overrides the file
    cfg.write_text("kk = 2\n")
    with pytest.raises(SystemExit, match="unknown key"):
        parse_args(["--config", str(cfg)])


@pytest.mark.slow
def test_resnet34_realistic_speedup():
    # One thread and the process's CPU time: the machine may be shared, and this checks compute.
    r = benchmark(Settings(model="resnet34", image_size=32, batch_size=64, k=5, steps=5, repeats=3,
                           threads=1, clock="process"))
    assert r["speedup"] > 1.3
    assert r["fraction_of_limit"] > 0.8


def test_per_call_times_steps_and_optimizer_steps_by_kind():
    from torch import nn

    from benchmarks.speedup import CLOCKS, PerCall

    calls = PerCall("cpu", CLOCKS["wall"])
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    kinds = iter(["a", "b", "a"] * 2)
    kind = lambda: next(kinds)  # noqa: E731 -- asked once by the step, once by its optimizer.step()
    def step():
        w.grad = torch.ones(3)
        opt.step()
    timed = calls.timed(step, kind)
    calls.time_optimizer(opt, kind)
    for _ in range(3):
        timed()
    assert {k: len(t) for k, t in calls.steps.items()} == {"a": 2, "b": 1}  # asked before each step
    assert {k: len(t) for k, t in calls.optimizer_steps.items()} == {"b": 1, "a": 2}
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.7))  # the steps ran, once each
    calls.clear()
    assert not calls.steps and not calls.optimizer_steps


@pytest.mark.parametrize("argv, message", [
    (["--k", "0"], "invalid k=0: must be >= 1"),
    (["--repeats", "-2"], "invalid repeats=-2: must be >= 1"),
    (["--threads", "0"], "invalid threads=0"),
])
def test_impossible_settings_are_one_line_before_anything_runs(argv, message):
    with pytest.raises(SystemExit, match=re.escape(f"command line: {message}")):
        main(argv)


@pytest.mark.parametrize("text, message", [
    ('model = "resnet99"\n', "invalid model='resnet99': must be one of"),
    ("k = 2.5\n", "invalid k=2.5: must be an integer"),
    ("steps = 10\n[table\n", "is not valid TOML"),
])
def test_a_settings_file_is_checked_and_named(tmp_path, text, message):
    path = tmp_path / "bench.toml"
    path.write_text(text)
    with pytest.raises(SystemExit, match=f"^{re.escape(str(path))}: .*{re.escape(message)}"):
        main(["--config", str(path)])
