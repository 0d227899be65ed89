import random

import pytest

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

from mtkd_utils.data.text import (
    EOS_ID,
    PAD_ID,
    SOS_ID,
    UNK_ID,
    Vocab,
    Ngrams,
    ngram_bleu4,
    corpus_bleu4,
    mbr_index,
    sentence_bleu4,
    tokenize,
)


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Mild NPDR, left eye.") == ["mild", "npdr", ",", "left", "eye", "."]


def test_vocab_from_training_texts_with_min_frequency():
    v = Vocab.build(["mild dr.", "mild amd.", "rare word"], min_freq=2)
    assert v.itos[:4] == ["<pad>", "<sos>", "<eos>", "<unk>"]
    assert set(v.itos[4:]) == {"mild", "."}                # 'dr', 'amd', 'rare', 'word' seen once


def test_encode_decode_truncates_but_keeps_eos():
    v = Vocab(["a", "b", "c"])
    ids = v.encode("a b zzz c", max_len=8)
    assert ids == [SOS_ID, 4, 5, UNK_ID, 6, EOS_ID, PAD_ID, PAD_ID]
    short = v.encode("a b c a b c", max_len=5)
    assert short == [SOS_ID, 4, 5, 6, EOS_ID] and len(short) == 5
    assert v.decode(ids) == ["a", "b", "<unk>", "c"]


def test_save_load(tmp_path):
    v = Vocab(["x", "y"])
    v.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").itos == v.itos


def test_bleu_matches_nltk_on_fixed_examples():
    refs = [tokenize("moderate npdr with cotton wool spots in the left eye ."), tokenize("normal fundus .")]
    hyps = [tokenize("moderate npdr with exudates in the left eye ."), tokenize("normal fundus .")]
    assert corpus_bleu4(refs, hyps) == corpus_bleu([[r] for r in refs], hyps)
    assert 0.4 < corpus_bleu4(refs, hyps) < 0.9
    smooth = SmoothingFunction().method1
    assert sentence_bleu4(refs[0], hyps[0]) == sentence_bleu([refs[0]], hyps[0], smoothing_function=smooth)
    assert sentence_bleu4(refs[0], refs[0]) == 1.0
    assert sentence_bleu4(refs[1], hyps[1]) < 1.0             # nltk: a 3-word sentence has no 4-gram, even when exact
    assert corpus_bleu4([["a"]], [["b"]]) == 0.0


def test_the_fast_sentence_bleu_is_nltks():
    rng = random.Random(0)
    words = "a b c d e . ,".split()
    for _ in range(500):
        ref, hyp = ([rng.choice(words) for _ in range(rng.randint(0, 10))] for _ in range(2))
        assert abs(ngram_bleu4(Ngrams(hyp), Ngrams(ref)) - sentence_bleu4(ref, hyp)) < 1e-12, (ref, hyp)


def test_mbr_picks_the_sentence_the_others_agree_with():
    said = [s.split() for s in ("normal fundus of the left eye .", "left eye : normal fundus .",
                                "normal fundus of the left eye .", "normal fundus , left eye .", "drusen .")]
    assert mbr_index(said) == 0                        # the sentence drawn twice; its copy (index 2) ties: the first
    # not merely the commonest: three samples that share most words beat two copies of an outlier
    said = [s.split() for s in ("x y z", "x y z", "a b c d e", "a b c d f", "a b c d g")]
    assert mbr_index(said) == 2
    assert mbr_index([[], ["a"]]) == 1 and mbr_index([["a"]]) == 0
    # candidates apart from the evidence (beam search's hypotheses): scored against the samples, not themselves
    evidence = [s.split() for s in ("a b c d e", "a b c d f", "a b c d g")]
    assert mbr_index(evidence, [["x", "y"], "a b c d".split(), "a b c d e".split()]) == 2
    with pytest.raises(ValueError, match="no sentences"):
        mbr_index(evidence, [])
