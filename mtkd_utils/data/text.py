"""T3 text: tokenizer, vocabulary (built from the training split only) and BLEU (nltk)."""
from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from nltk.tokenize import RegexpTokenizer
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

from ..io import read_json, write_json

PAD, SOS, EOS, UNK = "<pad>", "<sos>", "<eos>", "<unk>"
SPECIALS = (PAD, SOS, EOS, UNK)          # indices 0..3, in this order
PAD_ID, SOS_ID, EOS_ID, UNK_ID = range(4)
SENTENCE_SMOOTHING = "method1"           # nltk's SmoothingFunction method for sentence BLEU


# nltk's wordpunct pattern (words, runs of punctuation), with the vocabulary's specials kept whole: a generated
# '<unk>' is one missed word, not the three tokens '<', 'unk', '>' that BLEU would otherwise count
_TOKENIZER = RegexpTokenizer("|".join(re.escape(s) for s in SPECIALS) + r"|\w+|[^\w\s]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation, '<unk>' and the other specials as one token (nltk, no downloaded data)."""
    return _TOKENIZER.tokenize(text.lower())


def long_sentences(texts: Iterable[str], max_len: int) -> dict:
    """How many sentences Vocab.encode(max_len) cuts (more than max_len - 2 tokens: <sos> and <eos> take two), the
    longest's length and position, and the max_len that keeps every sentence whole."""
    lengths = [len(tokenize(t)) for t in texts]
    longest = max(range(len(lengths)), key=lengths.__getitem__) if lengths else None
    room = max_len - 2
    return {"cut": sum(n > room for n in lengths), "sentences": len(lengths), "max_tokens": room,
            "longest_tokens": lengths[longest] if lengths else 0, "longest_at": longest,
            "max_len_for_all": max(max_len, lengths[longest] + 2) if lengths else max_len}


class Vocab:
    """Word <-> index, with <pad>, <sos>, <eos>, <unk> first."""

    def __init__(self, words: Iterable[str]):
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 2) -> "Vocab":
        """From training texts only: validation and test words never shape the vocabulary."""
        counts = Counter(w for t in texts for w in tokenize(t))
        return cls(sorted(w for w, n in counts.items() if n >= min_freq))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int) -> list[int]:
        """<sos> words <eos>, truncated to max_len (the <eos> is kept), padded with <pad>."""
        ids = [self.stoi.get(w, UNK_ID) for w in tokenize(text)][: max_len - 2]
        ids = [SOS_ID, *ids, EOS_ID]
        return ids + [PAD_ID] * (max_len - len(ids))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens up to the first <eos>, without specials."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, SOS_ID):
                out.append(self.itos[i])
        return out

    def save(self, path: str | Path) -> Path:
        return write_json({"itos": self.itos}, path)

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        return cls(read_json(path)["itos"][len(SPECIALS):])


def corpus_bleu4(references: list[list[str]], hypotheses: list[list[str]], n: int = 4) -> float:
    """Corpus BLEU-n without smoothing (the standard figure; not the mean of sentence BLEU)."""
    weights = tuple([1.0 / n] * n)
    with warnings.catch_warnings():  # nltk warns on every zero n-gram count; a weak model's 0 is the answer
        warnings.simplefilter("ignore", UserWarning)
        return float(corpus_bleu([[r] for r in references], hypotheses, weights=weights))


def sentence_bleu4(reference: list[str], hypothesis: list[str]) -> float:
    """Sentence BLEU-4 with nltk smoothing method1 (without it short sentences score ~0)."""
    smooth = getattr(SmoothingFunction(), SENTENCE_SMOOTHING)
    return float(sentence_bleu([reference], hypothesis, smoothing_function=smooth))


def named_eye(text: str) -> str:
    """'left' or 'right' when the sentence names exactly one of the two eyes, else ''."""
    named = set(tokenize(text)) & {"left", "right"}
    return named.pop() if len(named) == 1 else ""


class Ngrams:
    """A sentence's length and its 1- to 4-gram counts, counted once for many BLEU comparisons."""

    def __init__(self, tokens: Sequence):
        tokens = tuple(tokens)
        self.length = len(tokens)
        self.counts = [Counter(tokens[i: i + n] for i in range(len(tokens) - n + 1)) for n in range(1, 5)]
        self.totals = [max(1, self.length - n + 1) for n in range(1, 5)]    # BLEU's precision denominators


def ngram_bleu4(hyp: Ngrams, ref: Ngrams) -> float:
    """sentence_bleu4(ref, hyp) from precounted n-grams: nltk's formula (one reference, smoothing method1, whose
    epsilon 0.1 stands in for a zero match count), 10-20x faster than nltk for the many pairs MBR compares."""
    matches = [sum(min(c, r[g]) for g, c in h.items() if g in r) for h, r in zip(hyp.counts, ref.counts)]
    if matches[0] == 0:
        return 0.0
    log_p = sum(0.25 * math.log((m if m else 0.1) / t) for m, t in zip(matches, hyp.totals))
    brevity = 1.0 if hyp.length > ref.length else math.exp(1 - ref.length / hyp.length)
    return brevity * math.exp(log_p)


def mbr_index(sentences: Sequence[Sequence], candidates: Sequence[Sequence] | None = None) -> int:
    """Minimum-Bayes-risk choice (Kumar & Byrne 2004): the index of the candidate with the highest mean sentence
    BLEU-4 against all the given sentences, each standing in for a reference drawn from the model (the candidate
    itself included). Candidates: the sentences themselves unless given (e.g. beam search's hypotheses too).

    Beam search returns the most probable sentence, not the one expected to score best: BLEU rewards the
    consensus of the model's likely sentences. Ties: the first. Tokens may be words or ids.
    """
    candidates = sentences if candidates is None else candidates
    if not sentences or not candidates:
        raise ValueError("mbr_index: no sentences to choose from")
    grams = [Ngrams(s) for s in sentences]
    unique = {tuple(s): i for i, s in reversed(list(enumerate(candidates)))}     # the first index of each
    hyp = (lambda i: grams[i]) if candidates is sentences else (lambda i: Ngrams(candidates[i]))
    gain = {i: sum(ngram_bleu4(hyp(i), ref) for ref in grams) for i in unique.values()}
    return max(sorted(gain), key=gain.get)


def trim(tokens: "torch.Tensor") -> "torch.Tensor":
    """Drop the all-<pad> tail columns of a batch of sentences (B, L): the LSTM then runs only as long as needed."""
    length = int((tokens != PAD_ID).sum(1).max())
    return tokens[:, : max(length, 2)]
