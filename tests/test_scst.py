"""T3 self-critical fine-tuning: the loss by hand, the sampled log-probabilities against teacher forcing, and a
fine-tuning run that learns the reference, moves only the decoder, and is saved and reloaded exactly."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import fake_data, model_for

from mtkd_utils.config import TASKS
from mtkd_utils.data.text import EOS_ID, PAD_ID, SOS_ID
from mtkd_utils.presets import config as preset
from mtkd_utils.train import scst
from mtkd_utils.train.model import CaptionDecoder


def test_the_loss_weighs_each_sample_by_its_reward_above_the_others_mean():
    reward = torch.tensor([[1.0, 0.0, 0.5]])
    log_prob = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    loss = scst.self_critical_loss(reward, log_prob)
    # baselines: (0 + .5)/2 = .25, (1 + .5)/2 = .75, (1 + 0)/2 = .5 -> advantages .75, -.75, 0
    assert loss.item() == pytest.approx(-(0.75 * -1.0 + -0.75 * -2.0 + 0.0) / 3)
    loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([-0.25, 0.25, 0.0])


def test_sampled_log_probabilities_are_those_teacher_forcing_gives_the_same_words():
    torch.manual_seed(0)
    dec = CaptionDecoder(feat_dim=4, vocab_size=9, embed_dim=4, hidden=8)
    feats = torch.randn(3, 4)
    tokens, log_prob = scst.sample_with_log_probs(dec, feats, max_len=7, n=2, generator=torch.Generator().manual_seed(1))
    assert tokens.shape[0] == 6 and log_prob.shape == (6,) and log_prob.requires_grad
    full = torch.cat([torch.full((6, 1), SOS_ID), tokens], 1)
    logits = dec(feats.repeat_interleave(2, 0), full).float()
    logits[..., [PAD_ID, SOS_ID]] = float("-inf")
    logp = F.log_softmax(logits, -1).gather(2, tokens[..., None])[..., 0]
    drawn = (tokens != PAD_ID) & (torch.arange(tokens.shape[1]) < 7 - 2)   # the <eos> forced in the last slot: not drawn
    assert torch.allclose(log_prob, torch.where(drawn, logp, 0.0).sum(1), atol=1e-5)
    assert ((tokens == EOS_ID).sum(1) == 1).all()       # every sentence closed once, then padded


def _data(train_text: str, val_text: str):
    """fake_data with 4 labeled training images saying train_text and 4 validation images saying val_text."""
    data = fake_data()
    data.roles["role"] = ["train"] * 4 + ["val"] * 4
    data.manifest = pd.DataFrame({"image_id": [f"i{i}" for i in range(8)], "coarse": "dr", "fine": "dr_a",
                                  "text": [train_text] * 4 + [val_text] * 4})
    return data


SAID = "mild dr normal dr mild ."       # six tokens: BLEU-4 has 4-grams to count


def test_fine_tuning_learns_the_reference_moves_only_the_decoder_and_reloads_exactly(tmp_path):
    data = _data(SAID, SAID)
    cfg = preset("smoke", t3_scst_steps=100, t3_scst_lr=1e-2, max_len=8, seed=3, beam_size=1)
    model = model_for(TASKS, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = scst.finetune_decoder(model, data, cfg, tmp_path)
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"decoder"}                                   # encoder and heads frozen: T1, T2 unchanged
    assert record["images"] == 4 and record["steps"] == 100
    assert record["reward_last"] > record["reward_first"] + 0.2     # it learns to say the reference
    assert record["kept"] and record["val_bleu4_after"] > record["val_bleu4_before"]
    again = model_for(TASKS, data)
    assert scst.load_finetuned_decoder(again, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    twice = model_for(TASKS, data)
    scst.finetune_decoder(twice, data, cfg)                         # the same seed: the same decoder
    assert all(torch.equal(a, b) for a, b in zip(twice.decoder.state_dict().values(), model.decoder.state_dict().values()))
    assert not scst.load_finetuned_decoder(model_for(TASKS, data), tmp_path / "elsewhere")


def test_a_fine_tuning_that_validation_does_not_reward_is_undone(tmp_path, monkeypatch):
    data = _data(SAID, SAID)
    scores = iter([{"bleu4": 0.5}, {"bleu4": 0.4}])               # validation BLEU-4 before, then after: it fell
    monkeypatch.setattr(scst, "validation_scores", lambda *args: next(scores))
    cfg = preset("smoke", t3_scst_steps=100, t3_scst_lr=1e-2, max_len=8, seed=3, beam_size=1)
    model = model_for(TASKS, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = scst.finetune_decoder(model, data, cfg, tmp_path)
    assert not record["kept"] and (record["val_bleu4_before"], record["val_bleu4_after"]) == (0.5, 0.4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not (tmp_path / scst.SCST_FILE).exists()


@pytest.mark.parametrize("weight, kept", [(0.0, False), (1.0, True)])
def test_the_keep_rule_weighs_findings_as_the_reward_does(tmp_path, monkeypatch, weight, kept):
    """BLEU-4 falls by 0.02 while findings F1 rises by 0.10: a BLEU reward undoes it, BLEU + 1 x F1 keeps it."""
    data = _data(SAID, SAID)
    scores = iter([{"bleu4": 0.50, "findings_f1": 0.60}, {"bleu4": 0.48, "findings_f1": 0.70}])
    monkeypatch.setattr(scst, "validation_scores", lambda *args: next(scores))
    cfg = preset("smoke", t3_scst_steps=3, t3_scst_findings=weight, max_len=8, seed=3, beam_size=1)
    record = scst.finetune_decoder(model_for(TASKS, data), data, cfg, tmp_path)
    assert record["kept"] == kept == (tmp_path / scst.SCST_FILE).exists()
    assert (record["val_findings_f1_before"], record["val_findings_f1_after"]) == (0.60, 0.70)


def test_validation_scores_state_the_findings_f1_only_with_an_extractor(monkeypatch):
    """Two validation sentences, findings = the words 'mild' and 'dr': 2 of 3 stated, 2 of 3 referenced, F1 2/3."""
    said = pd.DataFrame({"text_true": [SAID, "dr ."], "text_pred": ["normal mild .", SAID]})
    monkeypatch.setattr(scst, "predict", lambda *args, **kwargs: said)
    data, cfg = _data(SAID, SAID), preset("smoke", max_len=8, beam_size=1)
    model = model_for(TASKS, data)
    assert set(scst.validation_scores(model, data, cfg)) == {"bleu4"}
    scores = scst.validation_scores(model, data, cfg, extractor=lambda t: frozenset({"mild", "dr"} & set(t.split())))
    assert scores["findings_f1"] == pytest.approx(2 / 3)


def test_fine_tuning_refuses_a_split_without_sentences_and_bad_settings():
    data = _data("", "")
    with pytest.raises(ValueError, match="t3_scst_steps=0"):
        scst.finetune_decoder(model_for(TASKS, data), data, preset("smoke", t3_scst_steps=5))
    with pytest.raises(ValueError, match="t3_scst_samples"):
        preset("smoke", t3_scst_steps=5, t3_scst_samples=1)
    with pytest.raises(ValueError, match="t3_scst_steps"):
        preset("smoke", t3_scst_steps=-1)


def test_the_reward_adds_the_findings_f1_at_its_weight():
    from mtkd_utils.data.findings import sentence_f1
    from mtkd_utils.data.text import Ngrams, ngram_bleu4

    assert sentence_f1(frozenset({"a", "b"}), frozenset({"b", "c"})) == 0.5 and sentence_f1(frozenset(), frozenset()) == 1
    said = [["left", "eye", ":", "normal", "fundus", "."], ["right", "eye", ":", "pdr", "."]]
    ref = scst.Reference(Ngrams(said[0]), frozenset({"eye:left", "coarse:normal"}))
    extractor = {"left eye : normal fundus .": frozenset({"eye:left", "coarse:normal"}),
                 "right eye : pdr .": frozenset({"eye:right", "fine:dr_pdr", "coarse:dr"})}.get
    bleu = [ngram_bleu4(Ngrams(s), ref.ngrams) for s in said]
    assert scst.rewards(said, [ref], 2).tolist() == [pytest.approx(bleu)]
    weighted = scst.rewards(said, [ref], 2, findings_weight=0.5, extractor=extractor)
    assert weighted.tolist() == [pytest.approx([bleu[0] + 0.5 * 1.0, bleu[1] + 0.5 * 0.0])]
    with pytest.raises(ValueError, match="t3_scst_findings"):
        preset("smoke", t3_scst_findings=-1)


def test_fine_tuning_with_the_findings_in_the_reward_runs_on_a_real_label_map():
    data = _data(SAID, SAID)
    record = scst.finetune_decoder(model_for(TASKS, data), data, preset("smoke", t3_scst_steps=10, t3_scst_findings=1.0,
                                                                        max_len=8, beam_size=1))
    assert record["findings_weight"] == 1.0 and record["steps"] == 10
