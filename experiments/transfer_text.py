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
  through :func:`experiments.data.fetch_sst2` (checksummed on first use); GLUE's test split has no
  labels, so the dev set is the test set, as is standard. Both splits are tokenized once, padded to
  ``max_length`` and kept on the device; each minibatch is trimmed to its longest sentence.
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

import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments import runner
from experiments.config import RunConfig, require
from experiments.data import DownloadError, data_root, fetch_sst2, load_sst2_tsv
from experiments.files import atomic_open

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
    data_dir: str = ""  # where SST-2/ is (or is downloaded to); "" = experiments.data.data_root()
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


# ============================================================================ the generated language

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
# Word classes and how many generated words each has; a word is the class name and an index.
WORD_CLASSES = (("det", 8), ("noun", 60), ("verb", 20), ("cop", 6), ("pos", 20), ("neg", 20),
                ("neu", 20), ("int", 6), ("not", 4), ("and", 3), ("but", 2), ("stop", 1))
VOCAB = list(SPECIALS) + [f"{name}{i}" for name, n in WORD_CLASSES for i in range(n)]
WORD_ID = {word: i for i, word in enumerate(VOCAB)}
_WORDS = {name: [f"{name}{i}" for i in range(n)] for name, n in WORD_CLASSES}
POLARITY = {**{w: 1 for w in _WORDS["pos"]}, **{w: -1 for w in _WORDS["neg"]}}
BUT_WEIGHT = 3  # what follows "but" outweighs what precedes it
INT_WEIGHT = 2  # an intensified adjective counts double
GRAMMAR_VERSION = 2  # bump when the generator changes: it is part of the pretraining cache key

# Sentence shape (both corpora): 1-3 clauses joined by "and"/"but" words, then "stop0".
CLAUSES, CLAUSE_P = (1, 2, 3), (0.4, 0.4, 0.2)
P_BUT = 0.35  # a conjunction is a "but" word
P_COPULA = 0.5  # clause "det [int] [adj] noun cop [not] [int] adj", else "det [adj] noun verb det [adj] noun"
P_ATTRIBUTE, P_NOT, P_INT = 0.4, 0.3, 0.25
# Target task: every content word is drawn uniformly from its class, except that an adjective is a
# sentiment word (positive or negative, equally likely) with probability P_SENTIMENT.
P_SENTIMENT = 0.8
# Source corpus: longer sentences with more adjectives, and a latent mood that colours the words, as
# in real text: a clause followed by a "but" has the opposite mood with probability P_CONTRAST; an
# adjective is neutral with probability P_NEUTRAL_SOURCE, else agrees with its clause's mood with
# probability P_AGREE (a negated one by having the opposite polarity); a noun or verb comes from the
# half of its class that leans to the clause's mood (even index: positive) with probability P_LEAN.
CLAUSE_P_SOURCE, P_ATTRIBUTE_SOURCE = (0.2, 0.4, 0.4), 0.7
P_NEUTRAL_SOURCE, P_AGREE, P_CONTRAST, P_LEAN = 0.2, 0.95, 0.8, 0.5


def sentiment_score(words: list[str]) -> int:
    """The target label's score: the weighted balance of positive and negative adjectives.

    Scanning left to right, a positive adjective counts +1 and a negative one -1, times 2 after an
    intensifier (``int*``), times -1 after a negation (``not*``; both apply to the next adjective
    only, and a neutral adjective uses them up), times ``BUT_WEIGHT`` after a ``but*`` word.
    """
    score, weight, negated, intensified = 0, 1, False, False
    for w in words:
        if w.startswith("but"):
            weight, negated, intensified = BUT_WEIGHT, False, False
        elif w.startswith("and"):
            negated, intensified = False, False
        elif w.startswith("not"):
            negated = True
        elif w.startswith("int"):
            intensified = True
        elif w.startswith(("pos", "neg", "neu")):
            score += weight * POLARITY.get(w, 0) * (INT_WEIGHT if intensified else 1) * (-1 if negated else 1)
            negated, intensified = False, False
    return score


def _sentence(rng: random.Random, pick, clause_p=CLAUSE_P, p_attribute=P_ATTRIBUTE) -> list[str]:
    """One sentence; ``pick(word_class, clause, joins, negated)`` draws its nouns, verbs, adjectives."""
    n = rng.choices(CLAUSES, clause_p)[0]
    joins = ["but" if rng.random() < P_BUT else "and" for _ in range(n - 1)]
    words = []
    for c in range(n):
        if c:
            words.append(rng.choice(_WORDS[joins[c - 1]]))

        def adj(negated=False, c=c):
            out = [rng.choice(_WORDS["int"])] if rng.random() < P_INT else []
            return out + [pick("adj", c, joins, negated)]

        def noun_phrase(c=c):
            out = [rng.choice(_WORDS["det"])]
            if rng.random() < p_attribute:
                out += adj()
            return out + [pick("noun", c, joins, False)]

        if rng.random() < P_COPULA:
            words += noun_phrase() + [rng.choice(_WORDS["cop"])]
            negated = rng.random() < P_NOT
            if negated:
                words.append(rng.choice(_WORDS["not"]))
            words += adj(negated)
        else:
            words += noun_phrase() + [pick("verb", c, joins, False)] + noun_phrase()
    return words + ["stop0"]


def target_sentences(n: int, seed: int) -> tuple[list[list[str]], list[int]]:
    """The TARGET "sentiment" task: n sentences and labels 1 (score > 0) / 0 (score < 0).

    Words are drawn independently of each other; sentences scoring 0 are redrawn.
    """
    rng = random.Random(f"target-{seed}")

    def pick(word_class, clause, joins, negated):
        if word_class != "adj":
            return rng.choice(_WORDS[word_class])
        if rng.random() < P_SENTIMENT:
            return rng.choice(_WORDS["pos" if rng.random() < 0.5 else "neg"])
        return rng.choice(_WORDS["neu"])

    sentences, labels = [], []
    while len(sentences) < n:
        words = _sentence(rng, pick)
        score = sentiment_score(words)
        if score != 0:
            sentences.append(words)
            labels.append(int(score > 0))
    return sentences, labels


def source_sentences(n: int, seed: int) -> tuple[list[list[str]], list[int]]:
    """The SOURCE corpus: n sentences whose words follow a latent mood, and the moods (1 = +, 0 = -).

    Each sentence has a mood m = +-1, which its last "but" part carries; see ``P_CONTRAST``,
    ``P_NEUTRAL_SOURCE``, ``P_AGREE`` and ``P_LEAN`` for how it colours the words.
    """
    rng = random.Random(f"source-{seed}")
    sentences, moods = [], []
    for _ in range(n):
        mood = rng.choice((1, -1))
        contrast = rng.random() < P_CONTRAST

        def pick(word_class, clause, joins, negated, mood=mood, contrast=contrast):
            clause_mood = -mood if contrast and "but" in joins[clause:] else mood
            if word_class != "adj":
                words = _WORDS[word_class]
                if rng.random() < P_LEAN:
                    words = words[0 if clause_mood > 0 else 1::2]
                return rng.choice(words)
            if rng.random() < P_NEUTRAL_SOURCE:
                return rng.choice(_WORDS["neu"])
            polarity = clause_mood if rng.random() < P_AGREE else -clause_mood
            return rng.choice(_WORDS["pos" if polarity * (-1 if negated else 1) > 0 else "neg"])

        sentences.append(_sentence(rng, pick, CLAUSE_P_SOURCE, P_ATTRIBUTE_SOURCE))
        moods.append(int(mood > 0))
    return sentences, moods


def encode(sentences: list[list[str]], max_length: int) -> tuple[Tensor, Tensor]:
    """Word lists -> ([CLS] words [SEP] padded with [PAD], attention mask), both int64 N x max_length.

    Longer sentences are truncated (keeping [SEP] last), as a BERT tokenizer would.
    """
    ids = torch.full((len(sentences), max_length), PAD, dtype=torch.int64)
    for i, words in enumerate(sentences):
        row = [CLS] + [WORD_ID.get(w, UNK) for w in words][: max_length - 2] + [SEP]
        ids[i, : len(row)] = torch.tensor(row)
    return ids, (ids != PAD).long()


def target_task(n_train: int, n_test: int, seed: int, max_length: int) -> dict[str, tuple[Tensor, ...]]:
    """{"train", "test"}: (input_ids, attention_mask, labels) of the generated target task."""
    out = {}
    for split, n, s in (("train", n_train, 2 * seed), ("test", n_test, 2 * seed + 1)):
        sentences, labels = target_sentences(n, s)
        out[split] = (*encode(sentences, max_length), torch.tensor(labels, dtype=torch.int64))
    return out


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
                batch_size=cfg.pretrain_batch_size, lr=cfg.pretrain_lr, seed=cfg.pretrain_seed)


def pretrain_path(cfg: TextTransferConfig) -> Path:
    """results/<profile>/<experiment>/pretrained/tiny-distilbert-<hash of pretrain_spec>.pt"""
    blob = json.dumps(pretrain_spec(cfg), sort_keys=True).encode()
    key = hashlib.sha256(blob).hexdigest()[:12]
    return cfg.run_dir / "pretrained" / f"tiny-distilbert-{key}.pt"


def polarity_tags(words: list[str]) -> list[int]:
    """The SOURCE task's labels: each word's polarity in context, 0 none, 1 positive, 2 negative.

    A positive (negative) adjective is positive (negative), or the opposite right after a negation
    (as in `sentiment_score`); every other word, neutral adjectives included, is 0.
    """
    tags, negated = [], False
    for w in words:
        polarity = POLARITY.get(w, 0) * (-1 if negated else 1)
        tags.append(0 if polarity == 0 else 1 if polarity > 0 else 2)
        if w.startswith("not"):
            negated = True
        elif w.startswith(("pos", "neg", "neu", "and", "but")):
            negated = False
    return tags


def encode_tags(sentences: list[list[str]], max_length: int) -> Tensor:
    """`polarity_tags` aligned with `encode`'s ids: int64 N x max_length, -100 at [CLS], [SEP], [PAD]."""
    tags = torch.full((len(sentences), max_length), -100, dtype=torch.int64)
    for i, words in enumerate(sentences):
        row = polarity_tags(words)[: max_length - 2]
        tags[i, 1 : 1 + len(row)] = torch.tensor(row, dtype=torch.int64)
    return tags


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
        model.train()
        for step in range(steps):
            rows = slice(step * bs, (step + 1) * bs)
            batch_ids, batch_mask = trim(ids[rows], mask[rows])
            tag_logits, mood_logits = model(batch_ids, batch_mask)
            tag_loss = F.cross_entropy(tag_logits.flatten(0, 1), tags[rows, : batch_ids.shape[1]].flatten())
            mood_loss = F.cross_entropy(mood_logits, moods[rows])
            opt.zero_grad(set_to_none=True)
            (tag_loss + mood_loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if (step + 1) % max(1, steps // 4) == 0:
                log(f"pretraining tiny DistilBERT: step {step + 1}/{steps}, "
                    f"token loss {tag_loss.item():.3f}, mood loss {mood_loss.item():.3f}")
        model.eval()
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
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    log(f"pretraining the tiny DistilBERT ({cfg.pretrain_steps} steps), cached at {path}")
    result = pretrain(cfg, log)
    log(f"pretrained in {result['seconds']:.1f} s; held-out source: word polarity "
        f"{result['tag_accuracy']:.1f} % (sentiment words), mood {result['mood_accuracy']:.1f} %; "
        f"zero-shot target accuracy {result['zero_shot_accuracy']:.1f} %")
    with atomic_open(path, "wb") as f:
        torch.save(result, f)
    return result


def pretrained_encoder(cfg: TextTransferConfig, log=print) -> dict[str, Tensor]:
    """The tiny encoder's pretrained weights ("distilbert.*"), pretrained and cached on first use."""
    state = pretrained_source_model(cfg, log)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("distilbert.")}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ============================================================================ paper profile: hub + SST-2

class HubUnavailable(RuntimeError):
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


def sst2_tensors(folder: str | Path, tokenizer, max_length: int) -> dict[str, tuple[Tensor, ...]]:
    """{"train": train.tsv, "test": dev.tsv} as (input_ids, attention_mask, labels)."""
    out = {}
    for split, file in (("train", "train.tsv"), ("test", "dev.tsv")):
        sentences, labels = load_sst2_tsv(Path(folder) / file)
        out[split] = (*tokenize(tokenizer, sentences, max_length), labels)
    return out


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

    def _data(self, cfg: TextTransferConfig) -> dict[str, tuple[Tensor, ...]]:
        if cfg.dataset == "sst2":
            folder = fetch_sst2(Path(cfg.data_dir) if cfg.data_dir else data_root())
            return sst2_tensors(folder, load_tokenizer(cfg.pretrained), cfg.max_length)
        return target_task(cfg.n_train, cfg.n_test, cfg.data_seed, cfg.max_length)

    def train_tensors(self, cfg: TextTransferConfig, device: torch.device) -> tuple[Tensor, ...]:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        data = self._data(cfg)
        # Sorted by length, so that trimming the padding of each evaluation batch saves the most.
        order = torch.argsort(data["test"][1].sum(1), stable=True)
        self.test = tuple(t[order].to(device) for t in data["test"])
        return tuple(t.to(device) for t in data["train"])

    def build_model(self, cfg: TextTransferConfig) -> nn.Module:
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

    def evaluate(self, model: nn.Module, cfg: TextTransferConfig, device) -> dict[str, float]:
        ids, mask, y = self.test
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, len(y), cfg.eval_batch_size):
            rows = slice(start, start + cfg.eval_batch_size)
            logits = model(input_ids=(t := trim(ids[rows], mask[rows]))[0], attention_mask=t[1]).logits
            correct += (logits.argmax(-1) == y[rows]).sum()
        return {"test_accuracy": 100.0 * correct.item() / len(y)}


def main(argv: list[str] | None = None) -> list[dict]:
    """The command line; a missing hub model or data set ends it with a one-line error."""
    try:
        return runner.main(argv, TextTransferConfig, TOML, TextTransfer)
    except (HubUnavailable, DownloadError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
