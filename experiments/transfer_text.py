"""Transfer learning, text part (experiment 2): DistilBERT fine-tuned through the shared runner.

    python -m experiments.transfer_text [--profile quick|paper] [--method a,b] [--seeds 0,1,2] [key=value ...]

Methods (``experiments/configs/transfer_distilbert.toml``), all with the same h, momentum, batch
size and schedule; their names start with ``distilbert_`` so that they never collide with the
ResNet runs that share ``results/<profile>/transfer/`` (every run's JSON also has ``model`` and
``dataset``):

- ``distilbert_multirate``: Multirate with linear drift, fast = the head, slow = the rest;
- ``distilbert_multirate_l5``: the same with fast = transformer block 5 + the head;
- ``distilbert_train_all``: SGD over every parameter;
- ``distilbert_train_345`` / ``_45`` / ``_5``: SGD over those transformer blocks + the head, the
  rest frozen once (``cfg.train``), so the runner's TrainStep records no graph for the frozen prefix;
- ``distilbert_head_only``: SGD over the head alone.

"The head" is what DistilBertForSequenceClassification puts on top of the encoder,
``pre_classifier`` + ``classifier`` (both new, randomly initialised layers: the paper's "fc").

Profiles:

- ``paper``: ``distilbert-base-uncased`` weights and tokenizer from the Hugging Face hub, GLUE SST-2
  through :func:`experiments.datasets.data.load_sst2`: Hugging Face ``datasets`` (``nyu-mll/glue``, ``sst2``;
  the same cache as the weights, and the same offline switch, ``HF_HUB_OFFLINE=1``), else GLUE's
  MD5-checked SST-2.zip under ``data_dir`` (read the same way: the same sentences, the same tensors).
  GLUE's test split has no labels, so the dev set is the test set, as is standard. Both splits are
  tokenized once, padded to ``max_length`` and kept on the device; each minibatch is trimmed to its
  longest sentence.
- ``quick`` (default, offline, a few minutes on two CPU cores): no pretrained weights can be
  downloaded, so a tiny DistilBERT (6 blocks like the real one, so that the methods name the same
  layers) is first pretrained on a generated SOURCE task and cached under
  ``results/quick/transfer/pretrained/`` (keyed by a hash of the pretraining config), then
  fine-tuned on a different generated TARGET task on the same vocabulary of a couple of hundred
  generated words. Source: sentences whose words follow a latent mood (nouns and verbs lean to it,
  adjectives mostly agree with it, "but" introduces a contrast), trained with two heads that are
  then thrown away: each word's polarity in context (token classification) and the sentence's mood
  (from ``[CLS]``). Target: sentences whose words are drawn independently, labelled by the sign of
  the weighted balance of positive and negative adjectives, with negation, intensifiers and "but"
  (`sentiment_score`); the classification head is new, as in the paper.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments.core import errors, runner
from experiments.core.config import RunConfig, require
from experiments.core.determinism import code_key
from experiments.datasets import pretraining
from experiments.datasets.data import DownloadError, holdout_split, load_sst2
from experiments.datasets.synthetic_text import (  # noqa: F401 (tests read CLS, SEP, ... from here)
    CLS,
    GRAMMAR_VERSION,
    PAD,
    SEP,
    SPECIALS,
    VOCAB,
    WORD_ID,
    encode,
    encode_tags,
    polarity_tags,
    sentiment_score,
    source_sentences,
    target_sentences,
    target_task,
)

TOML = Path(__file__).parent / "configs" / "transfer_distilbert.toml"
DATASETS = ("synthetic_sentiment", "sst2")
INITS = ("pretrained", "scratch")
HEAD = ["pre_classifier", "classifier"]


@dataclass
class TextTransferConfig(RunConfig):
    """RunConfig plus the text-transfer fields; the TOML file holds the values used."""

    experiment: str = "transfer"
    model: str = "distilbert"  # lets figures split ResNet and DistilBERT panels from the run JSONs
    dataset: str = "synthetic_sentiment"  # "sst2": the paper profile (hub weights + GLUE SST-2)
    init: str = "pretrained"  # "scratch": the same architecture, randomly initialised (a check)
    fast: list[str] = field(default_factory=lambda: list(HEAD))
    pretrained: str = "distilbert-base-uncased"  # hub name or a local folder (sst2)
    data_dir: str = ""  # where SST-2/ is (or is unzipped to) without `datasets`; "" = data.data_root()
    max_length: int = 32  # tokens, [CLS] and [SEP] included
    eval_batch_size: int = 64
    threads: int = 0  # torch.set_num_threads for the process; 0 leaves torch's default
    # Quick profile: the generated target task (fixed across run seeds, like a real data set).
    n_train: int = 4000
    n_test: int = 2000
    data_seed: int = 0
    # Quick profile: the tiny DistilBERT and its pretraining on the source task.
    tiny_dim: int = 64
    tiny_layers: int = 6
    tiny_heads: int = 4
    tiny_hidden: int = 256
    tiny_dropout: float = 0.0  # all of DistilBERT's dropouts (the real one uses 0.1; see the TOML)
    pretrain_steps: int = 800
    pretrain_batch_size: int = 64
    pretrain_lr: float = 2e-3  # AdamW peak, linear warm-up (10 %) and decay
    pretrain_seed: int = 0

    def validate(self) -> None:
        super().validate()
        checks = [
            ("model", self.model == "distilbert", "'distilbert'"),
            ("dataset", self.dataset in DATASETS, f"one of {DATASETS}"),
            ("init", self.init in INITS, f"one of {INITS}"),
            ("max_length", self.max_length >= 8, ">= 8"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("threads", self.threads >= 0, ">= 0"),
            ("n_train", self.n_train >= 1, ">= 1"),
            ("n_test", self.n_test >= 1, ">= 1"),
            ("pretrain_steps", self.pretrain_steps >= 0, ">= 0"),
            ("pretrain_batch_size", self.pretrain_batch_size >= 1, ">= 1"),
            ("pretrain_lr", self.pretrain_lr >= 0, ">= 0"),
        ]
        require(self, checks)


# ============================================================================ tiny model and pretraining

def tiny_config(cfg: TextTransferConfig):
    from transformers import DistilBertConfig

    return DistilBertConfig(vocab_size=len(VOCAB), max_position_embeddings=cfg.max_length,
                            dim=cfg.tiny_dim, n_layers=cfg.tiny_layers, n_heads=cfg.tiny_heads,
                            hidden_dim=cfg.tiny_hidden, dropout=cfg.tiny_dropout,
                            attention_dropout=cfg.tiny_dropout, seq_classif_dropout=cfg.tiny_dropout,
                            pad_token_id=PAD, num_labels=2)


def pretrain_spec(cfg: TextTransferConfig) -> dict:
    """Everything the pretrained weights depend on (their cache key)."""
    return dict(grammar_version=GRAMMAR_VERSION, vocab_size=len(VOCAB), max_length=cfg.max_length,
                dim=cfg.tiny_dim, n_layers=cfg.tiny_layers, n_heads=cfg.tiny_heads,
                hidden_dim=cfg.tiny_hidden, dropout=cfg.tiny_dropout, steps=cfg.pretrain_steps,
                batch_size=cfg.pretrain_batch_size, lr=cfg.pretrain_lr, seed=cfg.pretrain_seed,
                # The code that produces the weights: changed code never reuses an old cache.
                code=code_key(pretrain_spec, source_sentences, pretraining))


def pretrain_path(cfg: TextTransferConfig) -> Path:
    """results/<profile>/<experiment>/pretrained/tiny-distilbert-<hash of pretrain_spec>.pt"""
    return pretraining.cache_path(cfg.run_dir, pretrain_spec(cfg), prefix="tiny-distilbert-", digits=12)


class SourceModel(nn.Module):
    """The pretraining model: the tiny DistilBERT encoder with the source task's two heads."""

    def __init__(self, config):
        from transformers import DistilBertModel

        super().__init__()
        self.distilbert = DistilBertModel(config)  # the same parameter names as in the classifier
        self.tagger = nn.Linear(config.dim, 3)
        self.mood = nn.Sequential(nn.Linear(config.dim, config.dim), nn.ReLU(), nn.Linear(config.dim, 2))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.distilbert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.tagger(hidden), self.mood(hidden[:, 0])


def pretrain(cfg: TextTransferConfig, log=print) -> dict:
    """Pretrain the tiny DistilBERT on the SOURCE task, on the CPU, with AdamW.

    The loss is the sum of the token classification of `polarity_tags` and the sentence mood from
    [CLS], on fresh `source_sentences`. Deterministic given the config; leaves the global RNG
    states as it found them. Returns {"state_dict": `SourceModel`'s weights (the encoder's are
    "distilbert.*"), "spec", "seconds", and, on fresh sentences: "tag_accuracy" (%, sentiment words
    of the source), "mood_accuracy" (%, source), "zero_shot_accuracy" (%, the mood head on the
    target task, i.e. before any fine-tuning)}.
    """
    spec = pretrain_spec(cfg)
    steps, bs = cfg.pretrain_steps, cfg.pretrain_batch_size
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.pretrain_seed)
        model = SourceModel(tiny_config(cfg))
        sentences, moods = source_sentences(steps * bs, cfg.pretrain_seed)
        ids, mask = encode(sentences, cfg.max_length)
        tags, moods = encode_tags(sentences, cfg.max_length), torch.tensor(moods)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.01),
                                 dict(params=no_decay, weight_decay=0.0)], lr=cfg.pretrain_lr)
        warmup = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))

        def loss(model: nn.Module, rows: slice) -> dict[str, Tensor]:
            batch_ids, batch_mask = trim(ids[rows], mask[rows])
            tag_logits, mood_logits = model(batch_ids, batch_mask)
            token_labels = tags[rows, : batch_ids.shape[1]].flatten()
            return {"token": F.cross_entropy(tag_logits.flatten(0, 1), token_labels),
                    "mood": F.cross_entropy(mood_logits, moods[rows])}

        def progress(step: int, losses: dict[str, Tensor]) -> None:
            if step % max(1, steps // 4) == 0:
                log(f"pretraining tiny DistilBERT: step {step}/{steps}, "
                    f"token loss {losses['token'].item():.3f}, mood loss {losses['mood'].item():.3f}")

        batches = [slice(step * bs, (step + 1) * bs) for step in range(steps)]  # one pass over fresh text
        pretraining.fit(model, opt, [batches], loss, schedule=sched, schedule_every="step",
                        clip_grad_norm=1.0, on_step=progress)
        held, held_moods = source_sentences(2000, cfg.pretrain_seed + 10**6)
        held_ids, held_mask = encode(held, cfg.max_length)
        held_tags = encode_tags(held, cfg.max_length)
        target, target_labels = target_sentences(2000, 10**6)
        with torch.no_grad():
            tag_logits, mood_logits = model(held_ids, held_mask)
            zero_shot = model(*encode(target, cfg.max_length))[1].argmax(-1)
        sentiment = (held_ids >= WORD_ID["pos0"]) & (held_ids < WORD_ID["neu0"])
        metrics = dict(
            tag_accuracy=_percent(tag_logits.argmax(-1)[sentiment] == held_tags[sentiment]),
            mood_accuracy=_percent(mood_logits.argmax(-1) == torch.tensor(held_moods)),
            zero_shot_accuracy=_percent(zero_shot == torch.tensor(target_labels)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return dict(state_dict=state, spec=spec, seconds=time.perf_counter() - t0, **metrics)


def _percent(hits: Tensor) -> float:
    return 100.0 * hits.float().mean().item()


def pretrained_source_model(cfg: TextTransferConfig, log=print) -> dict:
    """`pretrain`'s result for this config: from the cache, else pretrained now and cached."""
    path = pretrain_path(cfg)

    def pretrain_and_log() -> dict:
        log(f"pretraining the tiny DistilBERT ({cfg.pretrain_steps} steps), cached at {path}")
        result = pretrain(cfg, log)
        log(f"pretrained in {result['seconds']:.1f} s; held-out source: word polarity "
            f"{result['tag_accuracy']:.1f} % (sentiment words), mood {result['mood_accuracy']:.1f} %; "
            f"zero-shot target accuracy {result['zero_shot_accuracy']:.1f} %")
        return result

    return pretraining.cached(path, pretrain_and_log)


def pretrained_encoder(cfg: TextTransferConfig, log=print) -> dict[str, Tensor]:
    """The tiny encoder's pretrained weights ("distilbert.*"), pretrained and cached on first use."""
    state = pretrained_source_model(cfg, log)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("distilbert.")}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ============================================================================ paper profile: hub + SST-2

class HubUnavailable(errors.UserError, RuntimeError):
    """The pretrained model or tokenizer could not be loaded from the Hugging Face hub or its cache."""

    def __init__(self, name: str, err: BaseException):
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        super().__init__(
            f"cannot load {name!r} from the Hugging Face hub or its local cache ({reason}); on a "
            f"machine with internet run `hf download {name}` and copy its cache "
            f"(~/.cache/huggingface) here, or pass pretrained=/path/to/a/save_pretrained/folder, "
            f"or use the offline --profile quick")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise HubUnavailable(name, err) from None


def load_classifier(name: str, init: str = "pretrained") -> nn.Module:
    """DistilBertForSequenceClassification (2 labels) from the hub: pretrained, or its config only."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    try:
        if init == "scratch":
            return DistilBertForSequenceClassification(DistilBertConfig.from_pretrained(name, num_labels=2))
        return DistilBertForSequenceClassification.from_pretrained(name, num_labels=2)
    except OSError as err:
        raise HubUnavailable(name, err) from None


def tokenize(tokenizer, sentences: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Sentences -> (input_ids, attention_mask), int64 N x max_length (right padding, truncation)."""
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    if ids.shape != (len(sentences), max_length) or mask.shape != ids.shape:
        raise ValueError(f"tokenizer returned {tuple(ids.shape)}, expected {(len(sentences), max_length)}")
    return ids, mask


def sst2_tensors(splits: dict[str, tuple[list[str], Tensor]], tokenizer,
                 max_length: int) -> dict[str, tuple[Tensor, ...]]:
    """`load_sst2`'s splits tokenized: {"train": train, "test": dev}, each (input_ids, attention_mask,
    labels)."""
    return {split: (*tokenize(tokenizer, sentences, max_length), labels)
            for split, (sentences, labels) in (("train", splits["train"]), ("test", splits["dev"]))}


# ============================================================================ the task

def trim(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Cut right padding that no row of the batch uses."""
    n = max(1, int(mask.sum(1).max()))
    return ids[:, :n], mask[:, :n]


class TextTransfer(runner.Task):
    """DistilBERT sequence classification: SST-2 (``dataset="sst2"``) or the generated task."""

    def __init__(self, cfg: TextTransferConfig | None = None):
        super().__init__(cfg)
        self.test: tuple[Tensor, ...] | None = None
        # (start, batches): the evaluation batches through the frozen leading stages (`_eval_batches`)
        self._frozen_features: tuple[int, list[tuple[Tensor, Tensor]]] | None = None

    def _data(self, cfg: TextTransferConfig) -> dict[str, tuple[Tensor, ...]]:
        if cfg.dataset == "sst2":
            splits = load_sst2(cfg.data_dir or None)  # the hub's cache, else SST-2/ under the data root
            return sst2_tensors(splits, load_tokenizer(cfg.pretrained), cfg.max_length)
        return target_task(cfg.n_train, cfg.n_test, cfg.data_seed, cfg.max_length)

    def train_tensors(self, device: torch.device) -> tuple[Tensor, ...]:
        data = self._data(self.cfg)  # (cfg.threads is set by the runner, before any tensor work)
        train, test = data["train"], data["test"]
        if self.cfg.holdout:  # a tuning run: evaluate on the held-out part, never on the test set
            kept, held = holdout_split(len(train[-1]), self.cfg.holdout)
            train, test = tuple(t[kept] for t in train), tuple(t[held] for t in train)
        # Sorted by length, so that trimming the padding of each evaluation batch saves the most.
        order = torch.argsort(test[1].sum(1), stable=True)
        self.test = tuple(t[order].to(device) for t in test)
        return tuple(t.to(device) for t in train)

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        if cfg.dataset == "sst2":
            return load_classifier(cfg.pretrained, cfg.init)
        from transformers import DistilBertForSequenceClassification

        model = DistilBertForSequenceClassification(tiny_config(cfg))  # the head from the run's seed
        if cfg.init == "pretrained":
            missing, unexpected = model.load_state_dict(pretrained_encoder(cfg, _log), strict=False)
            if unexpected or sorted({k.split(".")[0] for k in missing}) != sorted(HEAD):
                raise RuntimeError(f"pretrained weights do not fit: missing {missing}, "
                                   f"unexpected {unexpected}")
        return model

    def batch(self, tensors, generator):
        ids, mask, y = tensors
        return (*trim(ids, mask), y)

    def loss(self, model: nn.Module, batch) -> Tensor:
        ids, mask, y = batch
        return F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y)

    def evaluate(self, model: nn.Module, device) -> dict[str, float]:
        y = self.test[-1]
        start, batches = self._eval_batches(model)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for (hidden, mask), rows in zip(batches, range(0, len(y), self.cfg.eval_batch_size)):
            logits = forward_from(model, start, hidden, mask)
            correct += (logits.argmax(-1) == y[rows:rows + self.cfg.eval_batch_size]).sum()
        return {"test_accuracy": 100.0 * correct.item() / len(y)}

    def _eval_batches(self, model: nn.Module) -> tuple[int, list[tuple[Tensor, Tensor]]]:
        """(start, batches): each evaluation batch (its padding trimmed) as the input of the
        model's stage `start` (`stages`) and its attention mask. The stages before `start` cannot
        change in training; their output is computed once a run, then reused. The same operations
        on the same batches as the whole forward, so the same bits."""
        ids, mask, _ = self.test
        batches = [trim(ids[i:i + self.cfg.eval_batch_size], mask[i:i + self.cfg.eval_batch_size])
                   for i in range(0, len(ids), self.cfg.eval_batch_size)]
        start = frozen_stages(model)
        if not start:
            return 0, batches
        if self._frozen_features is None or self._frozen_features[0] != start:
            self._frozen_features = (start, [run_stages(model, 0, start, *batch) for batch in batches])
        return self._frozen_features


# The model as a sequence of stages: the embeddings (with the attention mask as the blocks take it),
# then each transformer block; the head after them. The operations of
# DistilBertForSequenceClassification.forward (transformers 5), in its order
# (tests/test_transfer_text.py compares the logits bit for bit).

def stages(model: nn.Module) -> list[nn.Module]:
    return [model.distilbert.embeddings, *model.distilbert.transformer.layer]


def frozen_stages(model: nn.Module) -> int:
    """How many leading stages have no trained parameter (no dropout acts in evaluation)."""
    count = 0
    for stage in stages(model):
        if any(p.requires_grad for p in stage.parameters()):
            break
        count += 1
    return count


def run_stages(model: nn.Module, begin: int, end: int, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Stages [begin, end) on x: token ids and their 0/1 mask at stage 0, else hidden states and
    the blocks' attention mask. Returns the same pair after them."""
    from transformers.masking_utils import create_bidirectional_mask

    for i in range(begin, end):
        if i == 0:
            x = model.distilbert.embeddings(x)
            mask = create_bidirectional_mask(config=model.distilbert.config, inputs_embeds=x,
                                             attention_mask=mask)
        else:
            x = stages(model)[i](x, mask)
    return x, mask


def forward_from(model: nn.Module, start: int, x: Tensor, mask: Tensor) -> Tensor:
    """The logits, from the input of stage `start` (`run_stages`)."""
    if not start:
        return model(input_ids=x, attention_mask=mask).logits
    hidden, _ = run_stages(model, start, len(stages(model)), x, mask)
    pooled = model.dropout(F.relu(model.pre_classifier(hidden[:, 0])))
    return model.classifier(pooled)


def main(argv: list[str] | None = None) -> list[dict]:
    """The command line; a missing hub model or data set ends it with a one-line error."""
    try:
        return runner.main(argv, TextTransferConfig, TOML, TextTransfer)
    except (HubUnavailable, DownloadError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    errors.cli(main)
