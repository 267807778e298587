"""A toy translation task with a known word alignment.

Two made-up languages generated from one small seeded grammar. The *source* language
puts words in subject-verb-object order with adjectives before the noun and
prepositions before their noun phrase; a plural noun ("bokis") or a past-tense verb
("tanded") is one fused word. The *target* language puts the verb at the end of its
clause (subject-object-verb), adjectives and the article after the noun, postpositions
after their noun phrase, and spells plural and past tense as separate particles:

    source:  the big bokis tanded a red fel in the mor
    target:  boku ra kazo na fesu yome ko hiti ta moru na ni
             (bok PL big the  fel red a  tand PAST  mor the in)

Because every target word is produced *from* one source word, the true word alignment
is known exactly: a list of links ``(src_index, tgt_index)``, one per target token, so
an attention model's alignment can be scored against it (``alignment_error_rate``).

Everything is deterministic given the seed: the word forms, the sentences, the splits.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import torch

from ..attention._checks import check_positive_int
from .synthetic import IGNORE_INDEX

Tensor = torch.Tensor
Link = tuple[int, int]  # (source index, target index), both counted from 0

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


# --8<-- [start:vocab]
class Vocab:
    """Token <-> id. Ids 0, 1, 2, 3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        for token in tokens:
            if token not in SPECIALS and token not in self.itos:
                self.itos.append(token)
        self.stoi = {token: i for i, token in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.stoi[s] for s in SPECIALS)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of ``tokens`` (unknown words -> ``unk_id``), optionally framed by bos/eos."""
        ids = [self.stoi.get(token, self.unk_id) for token in tokens]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` up to the first ``<eos>``; ``<pad>`` and ``<bos>`` are dropped."""
        tokens = []
        for i in (int(i) for i in ids):
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            if not 0 <= i < len(self.itos):
                raise ValueError(f"id {i} is outside the vocabulary of size {len(self.itos)}")
            tokens.append(self.itos[i])
        return tokens
# --8<-- [end:vocab]


class SentencePair(NamedTuple):
    """One example: source tokens, target tokens and the true links (src_index, tgt_index)."""

    source: list[str]
    target: list[str]
    alignment: list[Link]


@dataclass
class TranslationBatch:
    """Padded tensors for a list of pairs (all ``long``, on the CPU).

    src (batch, src_len), padded with pad_id; src_lengths (batch,);
    tgt_in (batch, tgt_len + 1) = <bos> y_1 .. y_T, padded with pad_id;
    tgt_out (batch, tgt_len + 1) = y_1 .. y_T <eos>, padded with ``IGNORE_INDEX``
    (so that the padding does not count in the loss); tgt_lengths (batch,) counts the <eos>.
    """

    src: Tensor
    src_lengths: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    tgt_lengths: Tensor


# -- word forms -------------------------------------------------------------------------
_SOURCE_SOUNDS = ("bdfgklmnprstv", "aeiou", "lmnrst")      # onsets, vowels, codas
_TARGET_SOUNDS = ("hkmnrstwyz", "aeiou", "")               # open syllables only


def _word(rng: random.Random, sounds: tuple[str, str, str], syllables: int) -> str:
    onsets, vowels, codas = sounds
    word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
    return word + (rng.choice(codas) if codas and rng.random() < 0.5 else "")


def _lexicon(rng: random.Random, sounds, count: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = _word(rng, sounds, rng.choice((1, 2, 2, 3)))
        # room for the inflected forms: a stem must not collide with any form made so far
        if len(word) >= 3 and all(w not in taken for w in (word, word + "s", word + "ed")):
            taken.update((word, word + "s", word + "ed"))
            words.append(word)
    return words


# --8<-- [start:grammar]
class TranslationTask:
    """A seeded synthetic language pair with reordering and a known alignment.

    Source (SVO):  NP V NP PP*  [conj clause]...
        NP = [article] adjective* noun[+s] [that V NP]         PP = preposition NP
    Target (SOV):  NP' NP' V' PP'*  [conj' clause']...
        NP' = noun' [ra] adjective'* [article'] [yo NP' V']    PP' = NP' postposition'
        V'  = verb' [ta]      (ra marks the plural, ta the past tense: one source word,
                               two target words)

    ``seed`` fixes the word forms; ``sample`` draws sentences with its own seed.
    """

    def __init__(self, seed: int = 0, *, num_nouns: int = 120, num_adjectives: int = 50,
                 num_verbs: int = 60, num_prepositions: int = 8):
        for name, value in (("num_nouns", num_nouns), ("num_adjectives", num_adjectives),
                            ("num_verbs", num_verbs), ("num_prepositions", num_prepositions)):
            check_positive_int(name, value)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        rng = random.Random(seed)
        src_taken = {"the", "a", "that", "and", "but", "while"}
        tgt_taken = {"na", "ko", "yo", "ra", "ta", "to", "demo", "nagara"}

        def pair(count: int) -> list[tuple[str, str]]:
            return list(zip(_lexicon(rng, _SOURCE_SOUNDS, count, src_taken),
                            _lexicon(rng, _TARGET_SOUNDS, count, tgt_taken)))

        self.seed = seed
        self.nouns, self.adjectives = pair(num_nouns), pair(num_adjectives)
        self.verbs, self.prepositions = pair(num_verbs), pair(num_prepositions)
        self.articles = [("the", "na"), ("a", "ko")]
        self.conjunctions = [("and", "to"), ("but", "demo"), ("while", "nagara")]
        source = ["the", "a", "that"] + [c for c, _ in self.conjunctions]
        source += [w for lexicon in (self.adjectives, self.prepositions) for w, _ in lexicon]
        source += [w + suffix for w, _ in self.nouns for suffix in ("", "s")]
        source += [w + suffix for w, _ in self.verbs for suffix in ("", "ed")]
        target = ["na", "ko", "yo", "ra", "ta"] + [t for _, t in self.conjunctions]
        target += [t for lexicon in (self.nouns, self.adjectives, self.verbs, self.prepositions)
                   for _, t in lexicon]
        self.source_vocab, self.target_vocab = Vocab(sorted(source)), Vocab(sorted(target))

    # Each builder appends source words to ``src`` and returns the target side as a list of
    # (target word, index of the source word it comes from): the alignment is built with it.
    def _noun_phrase(self, rng: random.Random, src: list[str], depth: int) -> list[tuple[str, int]]:
        out: list = []
        article = rng.choice(self.articles) if rng.random() < 0.6 else None
        if article:
            src.append(article[0])
            article_link = (article[1], len(src) - 1)
        adjectives = []
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):
            word, translation = rng.choice(self.adjectives)
            src.append(word)
            adjectives.append((translation, len(src) - 1))
        noun, translation = rng.choice(self.nouns)
        plural = rng.random() < 0.35
        src.append(noun + "s" if plural else noun)
        out.append((translation, len(src) - 1))
        if plural:
            out.append(("ra", len(src) - 1))          # the fused plural becomes a particle
        out += adjectives                              # adjectives follow the noun
        if article:
            out.append(article_link)                   # ... and so does the article
        if depth > 0 and rng.random() < 0.25:          # relative clause: "that V NP"
            src.append("that")
            out.append(("yo", len(src) - 1))
            verb = self._verb(rng, src)
            out += self._noun_phrase(rng, src, depth - 1) + verb   # object before verb
        return out

    def _verb(self, rng: random.Random, src: list[str]) -> list[tuple[str, int]]:
        verb, translation = rng.choice(self.verbs)
        past = rng.random() < 0.4
        src.append(verb + "ed" if past else verb)
        return [(translation, len(src) - 1)] + [("ta", len(src) - 1)] * past

    def _clause(self, rng: random.Random, src: list[str], extra: float) -> list[tuple[str, int]]:
        subject = self._noun_phrase(rng, src, depth=1)
        verb = self._verb(rng, src)
        obj = self._noun_phrase(rng, src, depth=1)
        out = subject + obj + verb                     # SVO -> SOV
        while rng.random() < extra:                    # prepositional phrases stay at the end
            word, translation = rng.choice(self.prepositions)
            src.append(word)
            postposition = (translation, len(src) - 1)
            out += self._noun_phrase(rng, src, depth=0) + [postposition]
            extra /= 2
        return out

    def _sentence(self, rng: random.Random) -> SentencePair:
        src: list[str] = []
        extra = rng.random() * 0.8
        out = self._clause(rng, src, extra)
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 3))):
            word, translation = rng.choice(self.conjunctions)
            src.append(word)
            out.append((translation, len(src) - 1))
            out += self._clause(rng, src, extra)
        target = [word for word, _ in out]
        alignment = [(source_index, j) for j, (_, source_index) in enumerate(out)]
        return SentencePair(src, target, alignment)
# --8<-- [end:grammar]

    def sample(self, n: int, generator: int | torch.Generator = 0, *, min_len: int = 3,
               max_len: int = 40, max_tries: int = 200) -> list[SentencePair]:
        """``n`` sentence pairs whose *source* length lies in [min_len, max_len].

        ``generator`` is an int seed or a ``torch.Generator`` (one number is drawn from it).
        Sentences are drawn from the grammar and kept when their length fits, so the
        lengths follow the grammar's own distribution within the range (mostly short).
        """
        check_positive_int("n", n)
        check_positive_int("min_len", min_len)
        check_positive_int("max_len", max_len)
        if min_len < 3:
            raise ValueError(f"min_len must be at least 3 (the shortest sentence is noun verb noun), "
                             f"got {min_len}")
        if max_len < min_len:
            raise ValueError(f"max_len={max_len} is smaller than min_len={min_len}")
        if isinstance(generator, torch.Generator):
            seed = int(torch.randint(2**62, (1,), generator=generator))
        elif isinstance(generator, int) and not isinstance(generator, bool):
            seed = generator
        else:
            raise TypeError(f"generator must be an int seed or a torch.Generator, "
                            f"got {type(generator).__name__}")
        rng = random.Random(seed)
        pairs: list[SentencePair] = []
        for _ in range(n * max_tries):
            pair = self._sentence(rng)
            if min_len <= len(pair.source) <= max_len:
                pairs.append(pair)
                if len(pairs) == n:
                    return pairs
        raise ValueError(f"could not draw {n} sentences with min_len={min_len}, max_len={max_len} "
                         f"in {n * max_tries} tries; widen the range")

    def batch(self, pairs: Sequence[SentencePair]) -> TranslationBatch:
        """Padded tensors for ``pairs`` with this task's vocabularies (see ``batch``)."""
        return batch(pairs, self.source_vocab, self.target_vocab)


# --8<-- [start:batch]
def batch(pairs: Sequence[SentencePair], source_vocab: Vocab, target_vocab: Vocab) -> TranslationBatch:
    """Pad a list of pairs into a ``TranslationBatch`` (teacher forcing: tgt_in is tgt_out shifted)."""
    if len(pairs) == 0:
        raise ValueError("pairs is empty: a batch needs at least one sentence pair")
    sources = [source_vocab.encode(p.source) for p in pairs]
    targets = [target_vocab.encode(p.target) for p in pairs]
    src_len, tgt_len = max(map(len, sources)), max(map(len, targets)) + 1
    src = torch.full((len(pairs), src_len), source_vocab.pad_id, dtype=torch.long)
    tgt_in = torch.full((len(pairs), tgt_len), target_vocab.pad_id, dtype=torch.long)
    tgt_out = torch.full((len(pairs), tgt_len), IGNORE_INDEX, dtype=torch.long)
    for row, (s, t) in enumerate(zip(sources, targets)):
        src[row, :len(s)] = torch.tensor(s)
        tgt_in[row, :len(t) + 1] = torch.tensor([target_vocab.bos_id] + t)
        tgt_out[row, :len(t) + 1] = torch.tensor(t + [target_vocab.eos_id])
    return TranslationBatch(src, torch.tensor([len(s) for s in sources]), tgt_in, tgt_out,
                            torch.tensor([len(t) + 1 for t in targets]))
# --8<-- [end:batch]


# --8<-- [start:aer]
def _link_set(links: Iterable[Sequence[int]], name: str) -> set[Link]:
    found = set()
    for link in links:
        if len(link) != 2 or any(isinstance(i, bool) or int(i) != i or i < 0 for i in link):
            raise ValueError(f"{name} must hold (src_index, tgt_index) pairs of non-negative "
                             f"integers, got {link!r}")
        found.add((int(link[0]), int(link[1])))
    return found


def alignment_error_rate(predicted_links: Iterable[Sequence[int]],
                         true_links: Iterable[Sequence[int]]) -> float:
    """Och & Ney's alignment error rate with sure links only, for one sentence.

    With A the predicted links and S the sure (true) links, and the possible links P = S,

        AER = 1 - (|A ∩ S| + |A ∩ P|) / (|A| + |S|) = 1 - 2|A ∩ S| / (|A| + |S|),

    i.e. 1 - F1 of the predicted links: 0 for a perfect alignment, 1 for a disjoint one.
    Links are (src_index, tgt_index) pairs; duplicates count once.
    """
    return corpus_alignment_error_rate([predicted_links], [true_links])


def corpus_alignment_error_rate(predicted: Sequence[Iterable[Sequence[int]]],
                                true: Sequence[Iterable[Sequence[int]]]) -> float:
    """AER over a corpus: the counts |A ∩ S|, |A|, |S| are summed over sentences first."""
    if len(predicted) != len(true):
        raise ValueError(f"predicted has {len(predicted)} sentences but true has {len(true)}")
    overlap = size_predicted = size_true = 0
    for sentence_predicted, sentence_true in zip(predicted, true):
        a, s = _link_set(sentence_predicted, "predicted_links"), _link_set(sentence_true, "true_links")
        overlap, size_predicted, size_true = overlap + len(a & s), size_predicted + len(a), size_true + len(s)
    if size_predicted + size_true == 0:
        raise ValueError("both alignments are empty: the alignment error rate is undefined")
    return 1.0 - 2.0 * overlap / (size_predicted + size_true)


def links_from_attention(weights, *, src_len: int | None = None,
                         tgt_len: int | None = None) -> list[Link]:
    """The hard alignment read off attention: each target token links to its arg-max source.

    weights: (tgt_steps, src_steps), row i = the attention of target step i. Only the top-left
    ``tgt_len`` x ``src_len`` block is used (drop the <eos> step and source padding).
    Returns [(src_index, tgt_index), ...], one link per target token: row i is attributed to
    target word i, the word that step predicts. (Luong et al., 2015, footnote 14, attribute
    the weights of content-based scores to the step's input word i - 1 instead.)
    """
    weights = torch.as_tensor(weights)
    if weights.dim() != 2:
        raise ValueError(f"weights must be (tgt_len, src_len), got shape {tuple(weights.shape)}")
    tgt_len = weights.shape[0] if tgt_len is None else tgt_len
    src_len = weights.shape[1] if src_len is None else src_len
    if not (0 < tgt_len <= weights.shape[0] and 0 < src_len <= weights.shape[1]):
        raise ValueError(f"tgt_len={tgt_len}, src_len={src_len} must be positive and fit inside "
                         f"weights of shape {tuple(weights.shape)}")
    best = weights[:tgt_len, :src_len].argmax(dim=-1)
    return [(int(j), i) for i, j in enumerate(best)]
# --8<-- [end:aer]


# --8<-- [start:benchmark]
# The benchmark of chapters 3, 7 and 21: one task, one split. Training sentences are short
# (as RNNsearch-30 trained on sentences of up to 30 words) and the test bins reach further.
TRAIN_MAX_LEN = 25
TEST_BINS = ((3, 10), (11, 20), (21, 30), (31, 40))


def benchmark_task() -> TranslationTask:
    """The translation task every translation chapter uses (same seed, same vocabularies)."""
    return TranslationTask(seed=0, num_nouns=60, num_adjectives=25, num_verbs=30, num_prepositions=8)


def benchmark_data(task: TranslationTask, num_train: int, per_bin: int
                   ) -> tuple[list[SentencePair], dict[tuple[int, int], list[SentencePair]]]:
    """``num_train`` training pairs (sources of 3 to TRAIN_MAX_LEN words) and, for each
    bin of TEST_BINS, ``per_bin`` test pairs drawn with their own seeds."""
    train = task.sample(num_train, 1, max_len=TRAIN_MAX_LEN)
    test = {bin_: task.sample(per_bin, 100 + k, min_len=bin_[0], max_len=bin_[1])
            for k, bin_ in enumerate(TEST_BINS)}
    return train, test


def bucketed_batches(task: TranslationTask, pairs: Sequence[SentencePair], batch_size: int
                     ) -> list[TranslationBatch]:
    """Batches of sentences of similar source length (less padding, shorter decoder loops)."""
    check_positive_int("batch_size", batch_size)
    ordered = sorted(pairs, key=lambda p: len(p.source))
    return [task.batch(ordered[i:i + batch_size]) for i in range(0, len(ordered), batch_size)]
# --8<-- [end:benchmark]
