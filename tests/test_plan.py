"""The cost plan: real models at their paper size, stand-in data when the data set is absent.

The fast tests plan the perceptron (and a tiny language model on real files); the slow ones run
two steps of each kind for every other paper experiment on the CPU, on minibatches of 2.
"""

import json
import sys
import types

import pytest
import torch
import transformers

from benchmarks import plan
from experiments import regularization_lm, transfer_text
from experiments.core.config import load_config
from experiments.core.errors import UserError
from experiments.datasets import data
from multirate import Multirate, partition


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty data root: every data set is stood in for."""
    monkeypatch.setenv("MULTIRATE_DATA", str(tmp_path / "data"))
    return tmp_path


def check_plan(p, steps):
    assert p["methods"]
    for r in p["methods"]:
        kinds = ("slow", "fast") if r["fast_s"] is not None else ("slow",)
        assert set(r["times_s"]) == set(kinds)
        assert all(len(r["times_s"][kind]) == steps and min(r["times_s"][kind]) > 0 for kind in kinds)
        scale = r["batch_size"] / r["measure_batch"]
        assert r["slow_s"] == pytest.approx(sorted(r["times_s"]["slow"])[steps // 2] * scale
                                            if steps % 2 else
                                            sum(sorted(r["times_s"]["slow"])[steps // 2 - 1:steps // 2 + 1])
                                            / 2 * scale)
        if r["fast_s"] is not None:
            assert r["s_per_step"] == pytest.approx((r["slow_s"] + (r["k"] - 1) * r["fast_s"]) / r["k"])
        assert r["steps_per_run"] == r["epochs"] * (r["n_train"] // r["batch_size"])
        assert r["hours_per_run"] == pytest.approx(r["steps_per_run"] * r["s_per_step"] / 3600)
        assert r["hours_all_seeds"] == pytest.approx(r["hours_per_run"] * p["seeds"])
        assert r["peak_rss_gib"] > 0
    assert p["hours_figure"] == pytest.approx(sum(r["hours_all_seeds"] for r in p["methods"]))


def test_perceptron_paper_plan(no_data, capsys):
    out = no_data / "plan.json"
    plans = plan.main(["regularization_mlp", "--profile", "paper", "steps=2", "--seeds", "0,1",
                       "--json", str(out)])
    (p,) = json.loads(out.read_text())["plans"]
    assert p == json.loads(json.dumps(plans[0], default=str))
    check_plan(p, steps=2)
    assert [r["method"] for r in p["methods"]] == ["sgd", "dropout", "multirate"]
    assert p["seeds"] == 2
    by_method = {r["method"]: r for r in p["methods"]}
    # The paper's run: MNIST's 60,000 images, batch 64, 200 epochs, a 784-1024-10 perceptron
    assert by_method["sgd"]["n_train"] == 60_000 and by_method["sgd"]["steps_per_run"] == 200 * 937
    assert by_method["sgd"]["parameters"] == 784 * 1024 + 1024 + 1024 * 10 + 10
    assert by_method["multirate"]["fast_s"] is not None and by_method["sgd"]["fast_s"] is None
    assert any("MNIST not found" in note and "stand-in" in note for note in p["notes"])
    shown = capsys.readouterr().out
    assert "| multirate |" in shown and "stand-in" in shown


def test_real_data_is_used_when_present(no_data, monkeypatch):
    folder = no_data / "data" / "ptb"
    for module in (data, regularization_lm):  # these files have not the real checksums
        monkeypatch.setattr(module, "fetch_ptb", lambda root=None: folder)
    folder.mkdir(parents=True)
    for file in data.PTB_FILES:
        (folder / file).write_text("the cat sat on the mat\n" * 50)  # 6 words + <eos> a line
    (p,) = plan.main(["regularization_lm", "--profile", "paper", "--method", "sgd,multirate", "steps=1",
                      "d_model=8", "n_heads=2", "d_ff=8", "seq_len=8", "batch_size=4", "eval_batch_size=2"])
    check_plan(p, steps=1)
    assert p["notes"] == [f"data: Penn Treebank from {folder}"]
    assert p["methods"][0]["n_train"] == len(torch.arange(350).unfold(0, 9, 8))  # windows of 8 + 1


def test_loaders_are_put_back(no_data):
    originals = (data.load_cifar, data.fetch_mnist)
    with plan.Sources().installed() as sources:
        assert data.load_cifar is not originals[0]
        images, labels = data.load_cifar(data.fetch_cifar(name="cifar100"), "cifar100", train=False)
        assert images.shape == (10_000, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 100
    assert (data.load_cifar, data.fetch_mnist) == originals
    assert any("cifar100 not found" in note for note in sources.notes)


class WordTokenizer:
    """A stand-in for the DistilBERT tokenizer in the Hugging Face cache: [CLS] words [SEP] [PAD]..."""

    def __call__(self, sentences, padding, truncation, max_length, return_tensors):
        ids = torch.zeros(len(sentences), max_length, dtype=torch.int64)
        for i, sentence in enumerate(sentences):
            row = [101, *[2000 + len(w) for w in sentence.split()][: max_length - 2], 102]
            ids[i, : len(row)] = torch.tensor(row)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


class CachedHub:
    """Hugging Face `datasets` whose cache holds SST-2 (or nothing): records the offline flag it saw."""

    def __init__(self, cached: bool):
        self.cached, self.offline_seen = cached, []
        self.config = types.SimpleNamespace(HF_HUB_OFFLINE=False)

    def load_dataset(self, *args):
        self.offline_seen.append(self.config.HF_HUB_OFFLINE)
        if not self.cached:
            raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")
        return {"train": {"sentence": ["a fine film ", "dull "], "label": [1, 0]},
                "validation": {"sentence": ["great "], "label": [1]}}


def sst2_data(root, monkeypatch, hub):
    """What the plan hands the paper SST-2 task: (train and test tensors, the plan's notes)."""
    monkeypatch.setitem(sys.modules, "datasets", hub)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda name, local_files_only: WordTokenizer())
    cfg = load_config(transfer_text.TextTransferConfig, transfer_text.TOML, "paper", "distilbert_train_all",
                      [f"results_dir={root}", f"data_dir={root / 'data'}", "wandb=disabled"])
    with plan.Sources().installed() as sources:
        tensors = transfer_text.TextTransfer(cfg)._data(cfg)
    assert transfer_text.load_sst2 is data.load_sst2  # put back
    return tensors, sources.notes


def test_sst2_from_the_hub_cache_only(no_data, monkeypatch):
    hub = CachedHub(cached=True)
    tensors, notes = sst2_data(no_data, monkeypatch, hub)
    assert hub.offline_seen == [True] and hub.config.HF_HUB_OFFLINE is False  # cache only, then reset
    assert notes == ["data: SST-2 from the Hugging Face datasets cache"]
    assert tensors["train"][2].tolist() == [1, 0] and tensors["test"][0].shape == (1, 64)


def test_sst2_from_the_data_root_else_a_stand_in(no_data, monkeypatch, capsys):
    tensors, notes = sst2_data(no_data, monkeypatch, CachedHub(cached=False))
    folder = no_data / "data" / "SST-2"
    assert notes[0] == f"data: SST-2 in neither the Hugging Face datasets cache nor {folder}"
    assert "SST-2 stand-in of its sizes (67349 train, 872 dev" in notes[1]
    ids, mask, labels = tensors["train"]
    assert ids.shape == mask.shape == (67_349, 64) and labels.shape == (67_349,)
    assert tensors["test"][0].shape == (872, 64) and ids.dtype == labels.dtype == torch.int64
    assert not folder.exists()  # nothing downloaded

    folder.mkdir(parents=True)
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("sentence\tlabel\nit 's a charming film \t1\nbleak \t0\n")
    tensors, notes = sst2_data(no_data, monkeypatch, CachedHub(cached=False))
    assert notes == [f"data: SST-2 from {folder}"]
    assert tensors["train"][2].tolist() == [1, 0] and tensors["train"][0][0, :7].tolist() == [
        101, 2002, 2002, 2001, 2008, 2004, 102]
    assert "hub failed" not in capsys.readouterr().err  # the hub is tried once, in the cache only


def test_skip_to_slow_step():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    opt = Multirate(partition.layerwise(model, ["1"]), lr=0.1, k=5, momentum=0.9)
    for _ in range(2):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    assert not opt.is_slow_step
    assert plan.skip_to_slow_step(opt) and opt.is_slow_step
    assert not plan.skip_to_slow_step(torch.optim.SGD(model.parameters(), lr=0.1))


def test_targets_follow_the_registry():
    assert plan.plan_targets("transfer", "paper") == [("transfer", ["model=resnet50"]),
                                                      ("transfer", ["model=resnet34"])]
    assert plan.plan_targets("transfer", "paper", ["model=resnet34", "lr=0.1"]) == [("transfer", [])]
    assert [name for name, _ in plan.plan_targets("all", "paper")] == [  # registry order, Part.plan
        "transfer", "transfer", "transfer_text", "patch", "regularization_mlp", "regularization_lm"]


def test_bad_arguments(no_data):
    with pytest.raises(SystemExit):
        plan.main(["no_such_experiment"])
    with pytest.raises(SystemExit):
        plan.main(["regularization_mlp", "steps=0"])
    with pytest.raises(SystemExit, match="no_such_key"):
        plan.main(["regularization_mlp", "no_such_key=1"])


SLOW_CASES = {  # two methods each (a multirate one and a plain one), minibatches of 2 (CPU)
    "transfer": "train_all,multirate",  # ResNet-50 at 224x224 on CIFAR-100, then ResNet-34 on CIFAR-10
    "transfer_text": "distilbert_multirate,distilbert_head_only",  # DistilBERT-base, 66M
    "patch": "small_lr,multirate",  # WRN-16-10
    "regularization_lm": "sgd,multirate",  # the PTB transformer
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", SLOW_CASES)
def test_paper_plan(no_data, experiment):
    plans = plan.main([experiment, "--profile", "paper", "--method", SLOW_CASES[experiment], "steps=2",
                       "--measure-batch", "2"])
    for p in plans:
        check_plan(p, steps=2)
        assert any("stand-in" in note for note in p["notes"])
    params = {(p["model"], p["experiment"]): p["methods"][0]["parameters"] for p in plans}
    expected = {"transfer": {("resnet50", "transfer"): 23_712_932, ("resnet34", "transfer"): 21_289_802},
                "transfer_text": {("distilbert", "transfer_text"): 66_955_010},
                "patch": {(None, "patch"): 17_116_634},
                "regularization_lm": {(None, "regularization_lm"): None}}[experiment]
    assert params.keys() == expected.keys()
    for key, n in expected.items():
        assert n is None or params[key] == n


def test_every_target_is_checked_before_any_timing(no_data, monkeypatch):
    """`plan all lr=inf` fails in one line before the first experiment is timed."""
    monkeypatch.setattr(plan, "measure", lambda *a, **k: pytest.fail("timed before checking"))
    with pytest.raises(SystemExit, match="benchmarks.plan: invalid lr=inf: must be a finite number"):
        plan.main(["all", "lr=inf"])
    with pytest.raises(UserError, match="--seeds 0,-1: seed '-1'"):
        plan.main(["regularization_mlp", "--seeds", "0,-1"])
