"""Generated text: the sentiment language of the text-transfer experiment and a random Markov source.

The sentiment language (quick profile of ``experiments.transfer_text``): a vocabulary of a couple
of hundred generated words in word classes (`WORD_CLASSES`: determiners, nouns, verbs, copulas,
positive, negative and neutral adjectives, intensifiers, negations, "and" and "but" words), and two
corpora over it: the SOURCE corpus (`source_sentences`, words coloured by a latent mood; its labels
are each word's polarity in context, `polarity_tags`, and the sentence's mood) and the TARGET task
(`target_sentences`, words drawn independently, labelled by `sentiment_score`). `encode` turns word
lists into [CLS] ... [SEP] id tensors as a BERT tokenizer would.

The Markov source (quick profile of ``experiments.regularization_lm``): `markov_source` draws a
random sparse source of some order over words 0..V-1, `generate_text` samples independent chains.

Everything is deterministic in its arguments (seeded ``random.Random`` and ``torch.Generator``) and
leaves the global RNG states as it found them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from experiments.datasets.data import generated_once

# ============================================================================ the sentiment language

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


@generated_once
def target_task(n_train: int, n_test: int, seed: int, max_length: int) -> dict[str, tuple[Tensor, ...]]:
    """{"train", "test"}: (input_ids, attention_mask, labels) of the generated target task."""
    out = {}
    for split, n, s in (("train", n_train, 2 * seed), ("test", n_test, 2 * seed + 1)):
        sentences, labels = target_sentences(n, s)
        out[split] = (*encode(sentences, max_length), torch.tensor(labels, dtype=torch.int64))
    return out


# ============================================================================ the source task's word labels

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


# ============================================================================ a random Markov source

EOS = 0  # the generated vocabulary's end-of-sentence token


@dataclass
class MarkovSource:
    """A random sparse Markov source of order ``order`` over words 0..V-1 (0 = <eos>).

    Context c (the last ``order`` words as a base-V number) is followed by ``next_words[c, j]``
    with probability ``probs[c, j]``.
    """

    vocab_size: int
    order: int
    next_words: Tensor  # (V**order, branching) int64
    probs: Tensor  # (V**order, branching), rows sum to 1


def markov_source(vocab_size: int, order: int, branching: int, concentration: float, eos_prob: float,
                  seed: int) -> MarkovSource:
    """Draw a source: each context gets ``branching`` distinct next words, uniformly at random
    among the words 1..V-1, with Dirichlet(``concentration``) probabilities; with probability
    ``eos_prob`` a context's first candidate is <eos> instead."""
    g = torch.Generator().manual_seed(seed)
    contexts = vocab_size**order
    # Distinct words per row: the first `branching` of a random permutation of 1..V-1.
    keys = torch.rand(contexts, vocab_size - 1, generator=g)
    next_words = keys.argsort(dim=1)[:, :branching] + 1
    ends = torch.rand(contexts, generator=g) < eos_prob
    next_words[:, 0] = torch.where(ends, EOS, next_words[:, 0])
    # Dirichlet sampling takes no generator: draw it from a forked, seeded global stream instead.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probs = torch.distributions.Dirichlet(torch.full((contexts, branching), concentration)).sample()
    return MarkovSource(vocab_size, order, next_words, probs)


def generate_text(source: MarkovSource, n_tokens: int, chain_len: int, seed: int) -> Tensor:
    """``n_tokens`` words (int64) from independent chains of ``chain_len`` words, concatenated.

    All chains are sampled together, one position at a time; each starts in the all-<eos> context
    (the start of a sentence). Deterministic in its arguments.
    """
    g = torch.Generator().manual_seed(seed)
    chains = -(-n_tokens // chain_len)
    context = torch.zeros(chains, dtype=torch.int64)  # all <eos>
    width = source.vocab_size ** (source.order - 1)  # drops the oldest word from a context
    words = torch.empty(chains, chain_len, dtype=torch.int64)
    for t in range(chain_len):
        choice = torch.multinomial(source.probs[context], 1, generator=g).squeeze(1)
        words[:, t] = source.next_words[context, choice]
        context = (context % width) * source.vocab_size + words[:, t]
    return words.flatten()[:n_tokens]
