"""The text part of the transfer experiment: generated tasks, pretraining cache, SST-2 tokenisation,
which layers each method trains, the paper-profile task on a tiny random DistilBERT, hub errors."""

import json
import sys

import pytest
import torch
import transformers
from transformers import DistilBertConfig, DistilBertForSequenceClassification

import experiments.transfer_text as T
from experiments.core.config import list_methods, load_config
from experiments.core.optimizers import apply_train, build_optimizer
from experiments.core.runner import run
from experiments.datasets.data import load_sst2, load_sst2_tsv

TINY = ["tiny_dim=16", "tiny_layers=6", "tiny_heads=2", "tiny_hidden=32", "pretrain_steps=4",
        "pretrain_batch_size=8", "n_train=64", "n_test=32", "batch_size=16", "epochs=1"]
HEAD = {"pre_classifier", "classifier"}
LAYERS = [f"distilbert.transformer.layer.{i}" for i in range(6)]


def quick_cfg(tmp_path, method="distilbert_train_all", *extra):
    return load_config(T.TextTransferConfig, T.TOML, "quick", method,
                       [*TINY, f"results_dir={tmp_path}", "wandb=disabled", "device=cpu", *extra])


# ----------------------------------------------------------------------------- generated language

def test_sentiment_score_rules():
    score = T.sentiment_score
    assert score("det0 noun1 cop0 pos3 stop0".split()) == 1
    assert score("det0 noun1 cop0 not2 pos3 stop0".split()) == -1
    assert score("det0 noun1 cop0 not2 int1 pos3 stop0".split()) == -2  # negation spans the intensifier
    assert score("det0 neg4 noun1 cop0 pos3 but1 det0 noun2 cop1 neg5 stop0".split()) == -1 + 1 - 3
    # A neutral adjective uses up the negation.
    assert score("det0 noun1 cop0 not2 neu3 and0 det1 noun2 cop1 pos1 stop0".split()) == 1
    tags = T.polarity_tags("det0 noun1 cop0 not2 int1 pos3 and0 neg1 stop0".split())
    assert tags == [0, 0, 0, 0, 0, 2, 0, 2, 0]


def test_generated_tasks_are_deterministic_from_the_seed():
    a, b, c = (T.target_task(50, 20, seed, 32) for seed in (3, 3, 4))
    for split, n in (("train", 50), ("test", 20)):
        ids, mask, y = a[split]
        assert ids.shape == mask.shape == (n, 32) and y.shape == (n,) and ids.dtype == torch.int64
        assert (ids[:, 0] == T.CLS).all() and ((ids == T.SEP).sum(1) == 1).all()
        assert torch.equal(mask, (ids != T.PAD).long())
        for t, u in zip(a[split], b[split]):
            assert torch.equal(t, u)
    assert not torch.equal(a["train"][0], c["train"][0])
    assert not torch.equal(a["train"][0], a["test"][0][:20].repeat(3, 1)[:50])  # splits differ
    sentences, labels = T.target_sentences(200, 0)
    assert labels == [int(T.sentiment_score(s) > 0) for s in sentences]
    assert 0.35 < sum(labels) / len(labels) < 0.65
    assert T.source_sentences(30, 1) == T.source_sentences(30, 1) != T.source_sentences(30, 2)
    assert max(len(s) for s in T.source_sentences(500, 0)[0]) <= 30  # fits max_length 32 with [CLS], [SEP]


def test_vocabulary():
    assert 150 <= len(T.VOCAB) <= 400 and len(set(T.VOCAB)) == len(T.VOCAB)
    assert T.VOCAB[: len(T.SPECIALS)] == list(T.SPECIALS)


# ----------------------------------------------------------------------------- pretraining cache

def test_pretrain_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    cfg = quick_cfg(tmp_path)
    rng = torch.get_rng_state()
    state = T.pretrained_encoder(cfg, log=lambda _: None)
    assert torch.equal(torch.get_rng_state(), rng)  # pretraining leaves the run's RNG alone
    path = T.pretrain_path(cfg)
    assert path.parent == tmp_path / "quick" / "transfer" / "pretrained" and path.exists()
    # Atomic: no temp file left (the lock file beside it stays, as every lock file here does).
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock",
                                                              path.name + ".sha256"]
    assert state and all(k.startswith("distilbert.") for k in state)
    stamp = path.stat().st_mtime_ns

    monkeypatch.setattr(T, "pretrain", lambda *a, **k: pytest.fail("pretrained again"))
    again = T.pretrained_encoder(cfg)
    assert path.stat().st_mtime_ns == stamp
    assert all(torch.equal(state[k], again[k]) for k in state)
    # Another run seed shares the weights; another pretraining config does not.
    assert T.pretrain_path(quick_cfg(tmp_path, "distilbert_head_only", "seed=5")) == path
    assert T.pretrain_path(quick_cfg(tmp_path, "distilbert_train_all", "pretrain_steps=5")) != path


def test_pretraining_is_deterministic(tmp_path):
    cfg = quick_cfg(tmp_path, "distilbert_train_all", "pretrain_steps=2")
    a, b = T.pretrain(cfg, log=lambda _: None), T.pretrain(cfg, log=lambda _: None)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert {"tag_accuracy", "mood_accuracy", "zero_shot_accuracy", "seconds", "spec"} <= set(a)


def test_pretraining_prints_progress(tmp_path):
    lines = []
    T.pretrained_source_model(quick_cfg(tmp_path, "distilbert_train_all", "pretrain_steps=8"), lines.append)
    assert lines[0].startswith("pretraining the tiny DistilBERT (8 steps), cached at ")
    assert [line.split(",")[0] for line in lines[1:-1]] == [
        f"pretraining tiny DistilBERT: step {step}/8" for step in (2, 4, 6, 8)]
    assert lines[-1].startswith("pretrained in ")


def test_quick_model_loads_the_pretrained_encoder_and_a_fresh_head(tmp_path):
    cfg = quick_cfg(tmp_path)
    model = T.TextTransfer(cfg).build_model()
    encoder = T.pretrained_encoder(cfg)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in encoder.items())
    scratch = T.TextTransfer(quick_cfg(tmp_path, "distilbert_train_all", "init=scratch")).build_model()
    key = "distilbert.transformer.layer.0.ffn.lin1.weight"
    assert not torch.equal(scratch.state_dict()[key], encoder[key])


# ----------------------------------------------------------------------------- SST-2 (paper profile)

SST2_TRAIN = ("sentence\tlabel\nhide new secretions from the parental units \t0\n"
              "contains no wit , only labored gags \t0\nthat loves its characters \t1\n"
              "remains utterly satisfied to remain the same throughout \t0\n")
SST2_DEV = ("sentence\tlabel\nit 's a charming and often affecting journey . \t1\n"
            "unflinchingly bleak and desperate \t0\n")


class FakeTokenizer:
    """Word-level stand-in for the DistilBERT tokenizer: [CLS]=101, [SEP]=102, [PAD]=0, words 1000+."""

    def __call__(self, sentences, padding, truncation, max_length, return_tensors):
        assert (padding, truncation, return_tensors) == ("max_length", True, "pt")
        ids = torch.zeros(len(sentences), max_length, dtype=torch.int64)
        for i, sentence in enumerate(sentences):
            words = [1000 + sum(map(ord, w)) % 500 for w in sentence.split()][: max_length - 2]
            row = [101, *words, 102]
            ids[i, : len(row)] = torch.tensor(row)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def tiny_hub_model(*args, **kwargs):
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=1600, dim=16, n_layers=6, n_heads=2, hidden_dim=32,
                              max_position_embeddings=64, num_labels=2)
    return DistilBertForSequenceClassification(config)


@pytest.fixture
def sst2(tmp_path, monkeypatch):
    """A tiny SST-2 folder in GLUE's format, the fake tokenizer and the tiny model in place of the hub;
    no `datasets` (so `load_sst2` reads the folder, as without the package: nothing is downloaded)."""
    folder = tmp_path / "data" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(SST2_TRAIN)
    (folder / "dev.tsv").write_text(SST2_DEV)
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name: FakeTokenizer())
    monkeypatch.setattr(DistilBertForSequenceClassification, "from_pretrained", tiny_hub_model)
    return tmp_path


def paper_cfg(tmp_path, method="distilbert_train_all", *extra):
    return load_config(T.TextTransferConfig, T.TOML, "paper", method,
                       [f"results_dir={tmp_path}", f"data_dir={tmp_path / 'data'}", "wandb=disabled",
                        "device=cpu", "batch_size=4", "epochs=1", *extra])


def test_sst2_tokenised_into_tensors(sst2):
    data = T.sst2_tensors(load_sst2(sst2 / "data"), FakeTokenizer(), max_length=8)
    ids, mask, y = data["train"]
    assert ids.shape == mask.shape == (4, 8) and ids.dtype == mask.dtype == torch.int64
    assert y.tolist() == [0, 0, 1, 0]
    # "that loves its characters": four words between [CLS] and [SEP]
    assert ids[2, 0] == 101 and ids[2, 5] == 102 and (ids[2, 1:5] >= 1000).all()
    assert mask[2].tolist() == [1] * 6 + [0] * 2
    assert ids[0, -1] == 102  # truncated, [SEP] kept
    assert data["test"][0].shape == (2, 8) and data["test"][2].tolist() == [1, 0]

    cfg = paper_cfg(sst2)
    task = T.TextTransfer(cfg)
    train = task.train_tensors(torch.device("cpu"))
    assert [t.shape for t in train] == [(4, 64), (4, 64), (4,)]
    assert sorted(task.test[2].tolist()) == [0, 1] and task.test[0].shape == (2, 64)
    ids, mask, y = task.batch(train, torch.Generator())
    assert ids.shape == mask.shape == (4, int(train[1].sum(1).max()))  # padding trimmed


def test_sst2_through_load_sst2_gives_the_tensors_of_the_tsv_reader(sst2):
    """The paper path (`load_sst2`, then `sst2_tensors`) tokenises exactly what the TSV reader read
    before it went through `load_sst2`: the same tokenizer call, max_length and dtypes."""
    folder, tokenizer = sst2 / "data" / "SST-2", FakeTokenizer()
    old = {}
    for split, file in (("train", "train.tsv"), ("test", "dev.tsv")):  # the reader before load_sst2
        sentences, labels = load_sst2_tsv(folder / file)
        enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        old[split] = (enc["input_ids"].long(), enc["attention_mask"].long(), labels)
    cfg = paper_cfg(sst2)
    assert cfg.max_length == 64
    new = T.TextTransfer(cfg)._data(cfg)
    assert set(new) == set(old) == {"train", "test"}
    for split in old:
        assert [t.dtype for t in new[split]] == [torch.int64] * 3
        assert all(torch.equal(a, b) for a, b in zip(new[split], old[split], strict=True))


class FakeHub:
    """Hugging Face `datasets` with SST-2 in its cache: records the calls."""

    def __init__(self):
        self.calls = []

    def load_dataset(self, *args):
        self.calls.append(args)
        return {"train": {"sentence": ["a fine film ", "dull ", "fine "], "label": [1, 0, 1]},
                "validation": {"sentence": ["great "], "label": [1]}}


def test_paper_data_come_from_the_hub_when_datasets_has_them(sst2, monkeypatch):
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "datasets", hub)
    cfg = paper_cfg(sst2, "distilbert_train_all", f"data_dir={sst2 / 'elsewhere'}")
    data = T.TextTransfer(cfg)._data(cfg)
    assert hub.calls == [("nyu-mll/glue", "sst2")] and not (sst2 / "elsewhere").exists()
    assert data["train"][2].tolist() == [1, 0, 1] and data["test"][0].shape == (1, 64)
    expected = T.tokenize(FakeTokenizer(), ["a fine film ", "dull ", "fine "], 64)
    assert torch.equal(data["train"][0], expected[0]) and torch.equal(data["train"][1], expected[1])


def test_paper_task_trains_one_step(sst2):
    for method in ("distilbert_train_all", "distilbert_multirate"):
        cfg = paper_cfg(sst2, method)
        assert (cfg.experiment, cfg.model, cfg.dataset) == ("transfer", "distilbert", "sst2")
        result = run(cfg, T.TextTransfer(cfg))
        assert result["status"] == "complete"
        assert {r["metric"] for r in result["rows"]} == {"train_loss", "test_accuracy"}
        assert {r["step"] for r in result["rows"]} == {1}
        accuracy = [r["value"] for r in result["rows"] if r["metric"] == "test_accuracy"][0]
        assert accuracy in (0.0, 50.0, 100.0)
        initial = tiny_hub_model().state_dict()
        changed = [k for k, v in result["model"].state_dict().items() if not torch.equal(v, initial[k])]
        assert "classifier.weight" in changed and "distilbert.transformer.layer.0.ffn.lin1.weight" in changed
        record = json.loads((cfg.run_dir / f"{cfg.run_name}.json").read_text())
        assert record["config"]["model"] == "distilbert" and record["config"]["dataset"] == "sst2"


# ----------------------------------------------------------------------------- which layers train

EXPECTED_TRAIN = {
    "distilbert_train_all": None,  # everything
    "distilbert_multirate": None,
    "distilbert_multirate_l5": None,
    "distilbert_train_345": LAYERS[3:],
    "distilbert_train_45": LAYERS[4:],
    "distilbert_train_5": LAYERS[5:],
    "distilbert_head_only": [],
}
EXPECTED_FAST = {"distilbert_multirate": [], "distilbert_multirate_l5": LAYERS[5:]}


def _under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("method", list(EXPECTED_TRAIN))
def test_methods_train_and_freeze_exactly_the_intended_layers(tmp_path, method):
    assert set(list_methods(T.TOML)) == set(EXPECTED_TRAIN)
    cfg = quick_cfg(tmp_path, method, "init=scratch")
    model = T.TextTransfer(cfg).build_model()
    names = [n for n, _ in model.named_parameters()]
    apply_train(model, cfg.train)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    layers = EXPECTED_TRAIN[method]
    expected = set(names) if layers is None else {n for n in names if _under(n, [*layers, *HEAD])}
    assert trained == expected
    assert any(n.startswith("pre_classifier") for n in trained) and "classifier.bias" in trained
    if layers:  # the layer below the lowest trained one is frozen, and so are the embeddings
        assert not any(_under(n, [f"distilbert.transformer.layer.{int(layers[0][-1]) - 1}"]) for n in trained)
        assert not any(n.startswith("distilbert.embeddings") for n in trained)

    optimizer = build_optimizer(cfg, model)
    if method in EXPECTED_FAST:
        by_id = {id(p): n for n, p in model.named_parameters()}
        fast = {by_id[id(p)] for g in optimizer.param_groups if g["rate"] == "fast" for p in g["params"]}
        assert fast == {n for n in names if _under(n, [*EXPECTED_FAST[method], *HEAD])}
        assert optimizer.param_groups[0]["k"] == cfg.k == 5 and cfg.linear_drift
    else:
        assert isinstance(optimizer, torch.optim.SGD)


def test_method_names_carry_the_model_prefix():
    assert all(m.startswith("distilbert_") for m in list_methods(T.TOML))


# ----------------------------------------------------------------------------- the hub is unreachable

OFFLINE = OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find "
                  "them in the cached files.\nCheck your internet connection or see how to run the "
                  "library in offline mode.")


def _raise_offline(*args, **kwargs):
    raise OFFLINE


def test_unreachable_hub_gives_a_one_line_error(sst2, monkeypatch, capsys):
    monkeypatch.setattr(DistilBertForSequenceClassification, "from_pretrained", _raise_offline)
    with pytest.raises(T.HubUnavailable) as err:
        T.load_classifier("distilbert-base-uncased")
    message = str(err.value)
    assert "\n" not in message and "couldn't connect to 'https://huggingface.co'" in message
    assert "hf download distilbert-base-uncased" in message and "--profile quick" in message

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _raise_offline)
    argv = ["--profile", "paper", "--method", "distilbert_train_all", f"results_dir={sst2}",
            f"data_dir={sst2 / 'data'}", "wandb=disabled", "device=cpu"]
    with pytest.raises(SystemExit) as exit_:
        T.main(argv)
    assert str(exit_.value).startswith("error: cannot load 'distilbert-base-uncased'")
    assert "\n" not in str(exit_.value)


# ----------------------------------------------------------------------------- end to end (slow)

@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    """A shortened quick profile: pretraining transfers, and the CLI writes the runs' CSVs."""
    small = [f"results_dir={tmp_path}", "wandb=disabled", "device=cpu", "pretrain_steps=300",
             "n_train=1000", "n_test=500", "epochs=2", "tiny_hidden=128"]
    results = T.main(["--method", "distilbert_train_all,distilbert_multirate", "--seeds", "0", *small])
    assert [r["status"] for r in results] == ["complete", "complete"]
    assert len(list((tmp_path / "quick" / "transfer").glob("distilbert_*-seed0-*.csv"))) == 2
    final = {r["run_name"].split("-")[0]: r["rows"][-1]["value"] for r in results}
    scratch = T.main(["--method", "distilbert_train_all", "--seeds", "0", "init=scratch", *small])
    assert final["distilbert_train_all"] > scratch[0]["rows"][-1]["value"] + 10
    assert final["distilbert_multirate"] > 70


# ----------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize("method,frozen", [("distilbert_train_all", 0), ("distilbert_multirate", 0),
                                           ("distilbert_train_345", 4), ("distilbert_train_5", 6),
                                           ("distilbert_head_only", 7)])
def test_evaluation_reuses_the_frozen_stages_with_the_same_bits(tmp_path, method, frozen):
    # The test batches through the frozen embeddings and blocks are computed once a run; the logits
    # must still equal the whole model's bit for bit, after the trained parameters have moved.
    cfg = quick_cfg(tmp_path, method, "init=scratch", "eval_batch_size=7")
    task = T.TextTransfer(cfg)
    task.train_tensors(torch.device("cpu"))
    model = task.build_model()
    apply_train(model, cfg.train)
    assert T.frozen_stages(model) == frozen
    model.eval()
    with torch.no_grad():
        for _ in range(2):
            start, batches = task._eval_batches(model)
            ids, mask, _ = task.test
            for (x, m), i in zip(batches, range(0, len(ids), 7)):
                whole = model(*T.trim(ids[i:i + 7], mask[i:i + 7])).logits
                assert torch.equal(T.forward_from(model, start, x, m), whole)
            assert task._frozen_features is None if not frozen else task._frozen_features[0] == frozen
            for p in model.parameters():  # what training does to the trained parameters
                if p.requires_grad:
                    p.add_(0.1)
