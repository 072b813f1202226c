"""Regularisation experiment: generated text and images, PTB/MNIST through the tasks, the models,
the random-subgroup masks as configured, tiny end-to-end runs and the figure's summary.

The PTB reader itself (vocabulary, <unk>, <eos>, batchify, windows) is pinned in test_data.py and the
optimizer's masking arithmetic in test_optimizer.py; here they are checked through the config path.
"""

import hashlib
import math

import pandas as pd
import pytest
import torch

from experiments import regularization_lm, regularization_mlp
from experiments.core.config import list_methods, load_config
from experiments.core.optimizers import build_optimizer
from experiments.core.runlog import RunLog
from experiments.core.runner import evaluate, run
from experiments.datasets import data
from experiments.regularization_lm import (
    EOS,
    LMConfig,
    LMTask,
    TransformerLM,
    generate_text,
    markov_source,
    windows,
)
from experiments.regularization_mlp import MLP, MLPConfig, MLPTask, generated_images, prototypes
from figures import regularization as figure
from multirate import Multirate
from tests.helpers import LM_TINY, MLP_TINY
from tests.test_data import make_mnist

EXPERIMENTS = {"lm": (LMConfig, regularization_lm.TOML, LM_TINY),
               "mlp": (MLPConfig, regularization_mlp.TOML, MLP_TINY)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTIRATE_DATA", str(tmp_path / "data"))


def config(kind, tmp_path, method="sgd", *overrides, profile="quick"):
    cls, toml, tiny = EXPERIMENTS[kind]
    return load_config(cls, toml, profile, method, [f"results_dir={tmp_path / 'results'}", *tiny, *overrides])


# ----------------------------------------------------------------------------- generated text

def test_markov_source_rows_are_distributions_over_distinct_words():
    source = markov_source(vocab_size=10, order=2, branching=4, concentration=0.5, eos_prob=0.3, seed=1)
    assert source.next_words.shape == source.probs.shape == (100, 4)
    torch.testing.assert_close(source.probs.sum(1), torch.ones(100))
    assert all(len(set(row)) == 4 for row in source.next_words.tolist())
    assert 0 <= int(source.next_words.min()) and int(source.next_words.max()) < 10
    assert (source.next_words[:, 1:] != EOS).all()  # <eos> only ever as the first candidate
    assert 10 < int((source.next_words[:, 0] == EOS).sum()) < 50  # about eos_prob of the contexts
    again = markov_source(10, 2, 4, 0.5, 0.3, seed=1)
    assert torch.equal(source.next_words, again.next_words) and torch.equal(source.probs, again.probs)
    assert not torch.equal(source.probs, markov_source(10, 2, 4, 0.5, 0.3, seed=2).probs)


@pytest.mark.parametrize("order", [1, 2])
def test_generated_text_follows_the_source_and_is_seeded(order):
    source = markov_source(vocab_size=9, order=order, branching=3, concentration=1.0, eos_prob=0.2, seed=0)
    text = generate_text(source, n_tokens=1000, chain_len=50, seed=5)
    assert text.shape == (1000,) and text.dtype == torch.int64
    assert torch.equal(text, generate_text(source, 1000, 50, seed=5))
    assert not torch.equal(text, generate_text(source, 1000, 50, seed=6))
    allowed = {c: set(row) for c, row in enumerate(source.next_words.tolist())}
    for chain in text.view(20, 50).tolist():
        context = [EOS] * order  # every chain starts at the start of a sentence
        for word in chain:
            index = sum(w * 9 ** (order - 1 - i) for i, w in enumerate(context))
            assert word in allowed[index]
            context = [*context[1:], word]


def test_generated_splits_are_held_out():
    cfg = LMConfig(vocab_size=30, branching=5, chain_len=100, train_tokens=3000, valid_tokens=1000,
                   test_tokens=1000)
    vocab, train, valid, test = regularization_lm.generated_corpus(cfg)
    assert vocab == 30 and (len(train), len(valid), len(test)) == (3000, 1000, 1000)
    seen = {tuple(w) for w in train.unfold(0, 16, 1).tolist()}
    for split in (valid, test):  # other chains of the same source: no long stretch is shared
        assert not seen & {tuple(w) for w in split.unfold(0, 16, 1).tolist()}
    assert not torch.equal(valid, test)
    assert torch.equal(train, regularization_lm.generated_corpus(cfg)[1])


def test_windows_cover_the_stream_with_one_shared_token():
    w = windows(torch.arange(20), seq_len=4)
    assert w.tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 11, 12], [12, 13, 14, 15, 16]]
    targets = w[:, 1:].flatten().tolist()
    assert targets == list(range(1, 17))  # every token after the first is a target exactly once


# ----------------------------------------------------------------------------- PTB, MNIST via the tasks

PTB = {  # the Mikolov files' format: a leading space, words and <unk>, N for numbers, one sentence a line
    "ptb.train.txt": " aer banknote berlitz \n pierre <unk> N years old \n the <unk> N \n",
    "ptb.valid.txt": " consumers may want \n",  # none of these words is in train
    "ptb.test.txt": " no it was n't black monday \n the N years \n",
}


def test_lm_task_reads_ptb_files_in_the_real_format(tmp_path, monkeypatch):
    from experiments.datasets import data

    monkeypatch.setattr(data, "PTB_MD5", {})  # hand-written files: trusted on first use, as unpublished
    folder = tmp_path / "data" / "ptb"
    folder.mkdir(parents=True)
    for name, text in PTB.items():
        (folder / name).write_text(text)
    cfg = config("lm", tmp_path, "sgd", "seq_len=3", "eval_batch_size=2", profile="paper")
    assert cfg.dataset == "ptb"
    task = LMTask(cfg)
    vocab = ["aer", "banknote", "berlitz", "<eos>", "pierre", "<unk>", "N", "years", "old", "the"]
    assert task.vocab_size == len(vocab)
    stream = [vocab.index(w) for line in PTB["ptb.train.txt"].splitlines() for w in [*line.split(), "<eos>"]]
    assert len(stream) == 14
    assert task.train.tolist() == [stream[i:i + 4] for i in range(0, 12, 3)]  # windows of seq_len + 1
    unk, eos = vocab.index("<unk>"), vocab.index("<eos>")
    assert task.valid.t().tolist() == [[unk, unk], [unk, eos]]  # 4 tokens in 2 columns, time-major
    assert task.test.shape == (5, 2)  # 11 test tokens, the last dropped; "the", "N", "years" are known
    assert task.test.t().flatten().tolist()[6:] == [eos, vocab.index("the"), vocab.index("N"),
                                                   vocab.index("years")]
    for name in PTB:  # the files were trusted on first use
        digest = hashlib.sha256(PTB[name].encode()).hexdigest()
        assert (folder / f"{name}.sha256").read_text().split()[0] == digest
    cfg = config("lm", tmp_path, "multirate", "seq_len=3", "eval_batch_size=2", "batch_size=2",
                 profile="paper")
    result = run(cfg, LMTask(cfg))
    assert result["status"] == "complete" and {r["epoch"] for r in result["rows"]} == {1, 2}


def test_mlp_task_reads_mnist(tmp_path, monkeypatch):
    written = make_mnist(tmp_path / "src", n_train=20, n_test=6)
    monkeypatch.setattr(data, "MNIST_URL", (tmp_path / "src").as_uri() + "/")
    monkeypatch.setattr(data, "MNIST_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                                            for p in (tmp_path / "src").iterdir()})
    cfg = config("mlp", tmp_path, "dropout", "batch_size=10", profile="paper")
    assert cfg.dataset == "mnist" and cfg.dropout > 0
    task = MLPTask(cfg)
    assert task.x.shape == (20, 1, 28, 28) and task.classes == 10
    assert task.y_test.tolist() == written["t10k"][1].tolist()
    result = run(cfg, task)
    assert result["status"] == "complete"
    assert {r["metric"] for r in result["rows"]} == {"train_loss", "test_accuracy", "test_loss"}


# ----------------------------------------------------------------------------- generated images

def test_generated_images_are_seeded_held_out_and_labelled():
    protos = prototypes(classes=4, per_class=3, size=12, seed=0)
    assert protos.shape == (4, 3, 12, 12)
    torch.testing.assert_close(protos.std((2, 3)), torch.ones(4, 3))
    x, y = generated_images(300, protos, noise=0.3, max_shift=1, seed=1)
    assert x.shape == (300, 1, 12, 12) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert set(y.tolist()) == {0, 1, 2, 3}
    x2, y2 = generated_images(300, protos, noise=0.3, max_shift=1, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x_test, _ = generated_images(300, protos, noise=0.3, max_shift=1, seed=2)
    distinct = torch.cdist(x_test.flatten(1).float(), x.flatten(1).float()).min(1).values
    assert (distinct > 0).all()  # no test image is a training image
    # Without noise and shifts an image is its prototype times the contrast: the class is recoverable.
    clean, labels = generated_images(50, protos, noise=0.0, max_shift=0, seed=3)
    corr = torch.einsum("nhw,cphw->ncp", clean[:, 0].float() - 128, protos).amax(2)
    assert (corr.argmax(1) == labels).all()


def test_generated_images_shift_is_cyclic_and_bounded():
    protos = torch.zeros(1, 1, 6, 6)
    protos[0, 0, 2, 3] = 1.0
    x, _ = generated_images(200, protos, noise=0.0, max_shift=1, seed=0)
    peaks = (x[:, 0] > 128).nonzero()[:, 1:]
    assert len(peaks) == 200  # one bright pixel per image, moved by -1, 0 or +1 in each direction
    assert set(peaks[:, 0].tolist()) == {1, 2, 3} and set(peaks[:, 1].tolist()) == {2, 3, 4}


# ----------------------------------------------------------------------------- models

def test_transformer_shapes_and_causal_mask():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=11, d_model=16, n_heads=2, d_ff=32, n_layers=2, dropout=0.3).eval()
    ids = torch.randint(0, 11, (3, 9))
    out = model(ids)
    assert out.shape == (3, 9, 11)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    out2 = model(changed)
    torch.testing.assert_close(out2[:, :5], out[:, :5])  # earlier positions cannot see position 5
    assert not torch.allclose(out2[:, 5:], out[:, 5:])


@pytest.mark.parametrize("make", [
    lambda p: TransformerLM(vocab_size=7, d_model=8, n_heads=2, d_ff=16, n_layers=1, dropout=p),
    lambda p: MLP(inputs=12, hidden=32, classes=3, dropout=p),
], ids=["transformer", "mlp"])
def test_dropout_only_in_training(make):
    torch.manual_seed(0)
    x = torch.randint(0, 7, (4, 6)) if isinstance(make(0.0), TransformerLM) else torch.randn(4, 12)
    model = make(0.5)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))
    plain = make(0.0)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    torch.testing.assert_close(plain(x), model.eval()(x))  # eval with dropout == no dropout


# ----------------------------------------------------------------------------- configs and masks

@pytest.mark.parametrize("kind", ["lm", "mlp"])
def test_methods_share_the_schedule_and_step_size(kind):
    cls, toml, _ = EXPERIMENTS[kind]
    assert list_methods(toml) == ["sgd", "dropout", "multirate"]
    for profile in ("quick", "paper"):
        cfgs = {m: load_config(cls, toml, profile, m) for m in list_methods(toml)}
        shared = {(c.epochs, c.batch_size, c.momentum, c.weight_decay, c.schedule, c.dataset)
                  for c in cfgs.values()}
        assert len(shared) == 1
        sgd, dropout, mr = cfgs["sgd"], cfgs["dropout"], cfgs["multirate"]
        assert sgd.dropout == mr.dropout == 0 < dropout.dropout
        assert sgd.optimizer == dropout.optimizer == "sgd"
        assert mr.optimizer == "multirate" and mr.partition == "random_subgroups" and not mr.linear_drift
        assert mr.k >= 2 and 0 < mr.slow_fraction < 1
        if profile == "paper":  # untuned: one step size for all (the quick profile's are the protocol's,
            # tests/test_protocol.py checks them against the reference's trials)
            assert sgd.lr == dropout.lr and mr.lr / mr.k == pytest.approx(sgd.lr)  # h/k = SGD's step
    assert load_config(cls, toml, "paper", "sgd").epochs == {"lm": 150, "mlp": 200}[kind]


def test_random_subgroup_masks_as_configured(tmp_path):
    """Through cfg -> build_optimizer: which tensors are masked, the fraction, the redraw period k,
    zero entries during fast steps, full weights in evaluation and after each cycle."""
    cfg = config("lm", tmp_path, "multirate", "k=3", "slow_fraction=0.3", "seed=4", "d_model=32", "d_ff=64")
    task = LMTask(cfg)
    model = task.build_model()
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, Multirate) and opt.param_groups[0]["k"] == 3
    random_group = {id(p) for g in opt.param_groups if g["rate"] == "random" for p in g["params"]}
    for name, p in model.named_parameters():  # every weight matrix (embedding included), no vector
        assert (id(p) in random_group) == (p.dim() >= 2), name
    matrices = [p for p in model.parameters() if id(p) in random_group]

    batches = task.train[:8], task.train[8:16]
    masks, held = [], []
    for step in range(7):
        was_slow = opt.is_slow_step
        opt.zero_grad()
        task.loss(model, (batches[step % 2],)).backward()
        opt.step()
        state = [opt.state[p] for p in matrices]
        if was_slow:  # a fresh mask on every slow step: steps 0, 3, 6
            masks.append([s["mask"].clone() for s in state])
            with opt.full_weights():  # the masked entries, put back for an evaluation
                held.append([p[m].clone() for p, m in zip(matrices, masks[-1])])
            assert all((h != 0).all() for h in held[-1])
        assert all(torch.equal(s["mask"], m) for s, m in zip(state, masks[-1]))
        if not opt.is_slow_step:  # during the fast steps the masked entries are zero and frozen
            assert all((p[m] == 0).all() for p, m in zip(matrices, masks[-1]))
            with opt.full_weights():
                assert all(torch.equal(p[m], h) for p, m, h in zip(matrices, masks[-1], held[-1]))
            assert all((p[m] == 0).all() for p, m in zip(matrices, masks[-1]))
        else:  # the cycle is over: every entry is back, the held ones unchanged until the slow step
            assert all(torch.equal(p[m], h) for p, m, h in zip(matrices, masks[-1], held[-1]))
            assert all((p != 0).all() for p in matrices)
    assert len(masks) == 3
    assert all(not torch.equal(a, b) for a, b in zip(masks[0], masks[1]))
    fraction = sum(m.sum().item() for m in masks[1]) / sum(m.numel() for m in masks[1])
    assert fraction == pytest.approx(0.3, abs=0.02)
    # The runner's evaluate puts the zeroed entries back, and training resumes with them zeroed.
    assert not opt.is_slow_step
    metrics = evaluate(task, model, opt, torch.device("cpu"))
    assert math.isfinite(metrics["val_loss"]) and all((p[m] == 0).all() for p, m in zip(matrices, masks[-1]))
    # Masks are a function of the configured seed.
    other = build_optimizer(load_config(LMConfig, regularization_lm.TOML, "quick", "multirate",
                                        [*LM_TINY, "k=3", "slow_fraction=0.3", "seed=5", "d_model=32",
                                         "d_ff=64"]), task.build_model())
    assert other.param_groups[0]["seed"] == 5 != opt.param_groups[0]["seed"]


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("kind", ["lm", "mlp"])
@pytest.mark.parametrize("method", ["sgd", "dropout", "multirate"])
def test_tiny_run_per_method(tmp_path, kind, method):
    cfg = config(kind, tmp_path, method)
    task = LMTask(cfg) if kind == "lm" else MLPTask(cfg)
    result = run(cfg, task)
    assert result["status"] == "complete"
    rows = result["rows"]
    expected = ({"train_loss", "val_loss", "val_ppl", "test_loss", "test_ppl"} if kind == "lm"
                else {"train_loss", "test_accuracy", "test_loss"})
    assert {r["metric"] for r in rows} == expected and {r["epoch"] for r in rows} == {1, 2}
    last = {r["metric"]: r["value"] for r in rows if r["epoch"] == 2}
    if kind == "lm":
        assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]))
        assert last["val_loss"] < 2 * math.log(cfg.vocab_size)
    else:
        assert 0 <= last["test_accuracy"] <= 100
    assert (tmp_path / "results" / "quick" / f"regularization_{kind}" / f"{result['run_name']}.csv").exists()


# ----------------------------------------------------------------------------- figure

def log_run(tmp_path, experiment, method, seed, series):
    cfg = LMConfig(experiment=experiment, results_dir=str(tmp_path), method=method, seed=seed,
                   wandb="disabled", epochs=len(next(iter(series.values()))))
    log = RunLog(cfg)
    log.start("cpu")
    for epoch in range(1, cfg.epochs + 1):
        log.log(epoch, 10 * epoch, float(epoch), {m: v[epoch - 1] for m, v in series.items()})
    log.finish("complete")


def test_figure_summary_from_csvs(tmp_path, capsys):
    for seed, shift in ((0, 0.0), (1, 0.2)):
        val = [3.0 + shift, 2.0 + shift, 2.5 + shift, 2.8 + shift]
        log_run(tmp_path, "regularization_lm", "sgd", seed,
                {"val_loss": val, "test_ppl": [30.0, 20.0 + seed, 25.0, 28.0]})
        log_run(tmp_path, "regularization_mlp", "multirate", seed,
                {"test_accuracy": [50.0, 80.0 + seed, 79.0]})
    figure.main(["--results-dir", str(tmp_path)])
    out = tmp_path / "quick" / "figures"
    assert (out / "regularization.png").stat().st_size > 10_000 and (out / "regularization.pdf").exists()
    summary = pd.read_csv(out / "regularization.csv").set_index(["experiment", "method"])
    lm = summary.loc[("regularization_lm", "sgd")]
    assert lm.min_val_loss == pytest.approx(2.1) and lm.best_epoch == 2 and lm.seeds == 2
    assert lm.final_val_loss == pytest.approx(2.9) and lm.rise == pytest.approx(0.8)
    assert lm.test_ppl_at_best == pytest.approx(20.5)  # test perplexity at the best-validation epoch
    mlp = summary.loc[("regularization_mlp", "multirate")]
    assert mlp.final_accuracy == pytest.approx(79.0) and mlp.best_accuracy == pytest.approx(80.5)
    assert "min_val_loss" in capsys.readouterr().out


def test_figure_without_results(tmp_path):
    with pytest.raises(SystemExit, match="no complete runs"):
        figure.main(["--results-dir", str(tmp_path)])
