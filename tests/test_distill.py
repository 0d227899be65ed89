"""The teachers as one source of soft targets: who distils what, the shared T3 sentence, cache == online."""
import numpy as np
import torch
from conftest import fake_data, model_for

from mtkd_utils.config import TASKS, task_subsets
from mtkd_utils.data.text import EOS_ID, PAD_ID, SOS_ID
from mtkd_utils.presets import config as preset
from mtkd_utils.train import losses
from mtkd_utils.train.distill import (
    OnlineTeachers,
    build_soft_targets,
    ensemble_greedy,
    ensemble_outputs,
    load_soft_targets,
)
from mtkd_utils.train.engine import MultiTaskLoss, caption_terms
from mtkd_utils.train.model import CaptionDecoder, build_model
from mtkd_utils.train.reload import teachers_for

MAX_LEN, TOPK = 8, 5


def teachers(data, subsets):
    return [model_for(s, data).eval() for s in subsets]


def batch(data, rows):
    return torch.from_numpy(data.images[rows]).permute(0, 3, 1, 2).float() / 255


def test_ensemble_uses_exactly_the_teachers_that_know_each_task():
    assert teachers_for("M2", ("T1", "T2")) == [("T1", "T2")]
    assert teachers_for("M3", TASKS) == [("T1",), ("T2",), ("T3",), ("T1", "T2"), ("T1", "T3"), ("T2", "T3"), TASKS]
    data = fake_data()
    rows = np.arange(8)
    x = batch(data, rows)
    out = ensemble_outputs(teachers(data, task_subsets(TASKS)), x, data.targets["T3"][rows], data.is_labeled_train(rows),
                           MAX_LEN, TOPK)
    assert out["T1"].shape == (8, 4, 2) and out["T2"].shape == (8, 4, 3)          # (B, K, C): 4 teachers know each
    assert out["T3_val"].shape == out["T3_idx"].shape == (8, 4, MAX_LEN - 1, TOPK)
    model = model_for(("T1", "T3"), data).eval()              # eval: no dropout noise between the calls

    def loss(t):
        return MultiTaskLoss(data, {"T1": 1, "T3": 1}, alpha=0.5, tau=2.0, teachers=t)(model, x, rows)

    # A teacher that knows none of the student's tasks changes nothing; one that knows T1 does.
    assert torch.allclose(loss(OnlineTeachers(teachers(data, [("T2",)]), MAX_LEN, TOPK)), loss(None))
    assert not torch.allclose(loss(OnlineTeachers(teachers(data, [("T1",)]), MAX_LEN, TOPK)), loss(None))


def test_one_decoder_ensemble_is_its_own_greedy_decode():
    torch.manual_seed(0)
    dec = CaptionDecoder(feat_dim=4, vocab_size=9, embed_dim=4, hidden=8).eval()
    feats = torch.randn(6, 4)
    assert torch.equal(ensemble_greedy([dec], [feats], MAX_LEN), dec.generate(feats, MAX_LEN, beam_size=1))


def test_ensemble_decode_follows_the_mean_of_the_word_probabilities():
    decs = [CaptionDecoder(feat_dim=4, vocab_size=7, embed_dim=3, hidden=5) for _ in range(2)]
    bias = [torch.tensor([0, 0, 0, 0, 4.0, 3.9, 0]), torch.tensor([0, 0, 0, 0, 0, 4.0, 0])]
    with torch.no_grad():
        for d, b in zip(decs, bias):
            d.out.weight.zero_()
            d.out.bias.copy_(b)
    feats = [torch.randn(2, 4)] * 2
    assert (ensemble_greedy(decs[:1], feats[:1], 5)[:, 1:-1] == 4).all()   # the first alone says word 4 ...
    mean = (bias[0].softmax(0) + bias[1].softmax(0)) / 2
    assert mean.argmax() == 5
    out = ensemble_greedy(decs, feats, 5)
    assert (out[:, 1:-1] == 5).all() and (out[:, -1] == EOS_ID).all()     # ... the ensemble word 5


def test_teachers_share_one_sentence_the_reference_on_labeled_rows():
    data = fake_data()
    rows = np.arange(8)
    labeled = data.is_labeled_train(rows)
    ts = teachers(data, [("T3",), ("T1", "T3")])
    out = ensemble_outputs(ts, batch(data, rows), data.targets["T3"][rows], labeled, MAX_LEN, TOPK)
    assert torch.equal(out["T3_tokens"][labeled], data.targets["T3"][rows][labeled])
    feats = [t.features(batch(data, rows[~labeled.numpy()])) for t in ts]
    assert torch.equal(out["T3_tokens"][~labeled], ensemble_greedy([t.decoder for t in ts], feats, MAX_LEN))


def test_one_decoder_pass_gives_each_teachers_own_word_level_kd():
    """caption_terms' single pass along the shared sentence == one caption_kd per teacher, averaged."""
    torch.manual_seed(0)
    B, L, V, K = 3, 6, 9, 2
    dec = CaptionDecoder(feat_dim=4, vocab_size=V, embed_dim=4, hidden=8)
    feats = torch.randn(B, 4)
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 4, 2, 0, 0, 0], [1, 7, 8, 4, 5, 2]])
    val, idx = torch.randn(B, K, L - 1, V).topk(4, dim=-1)
    labeled = torch.tensor([True, False, True])
    soft = dict(T3_tokens=tokens, T3_val=val, T3_idx=idx)
    hard, kd = caption_terms(dec, feats, torch.full((B, L), PAD_ID), labeled, soft, tau=2.0)
    logits = dec(feats, tokens)
    per_teacher = torch.stack([losses.caption_kd(logits, val[:, k], idx[:, k], tokens, 2.0) for k in range(K)], 1)
    assert torch.allclose(kd, per_teacher.mean(1), atol=1e-6)
    assert torch.allclose(hard, losses.caption_ce(logits, tokens) * labeled)  # no CE without a reference


def test_cached_soft_targets_give_the_online_loss(tmp_path):
    data = fake_data()
    rows = np.arange(8)
    ts = teachers(data, task_subsets(TASKS))
    path = tmp_path / "soft_targets.pt"
    build_soft_targets(ts, data, rows, path, MAX_LEN, TOPK, batch_size=3, device=torch.device("cpu"))
    cached, online = load_soft_targets(path, len(rows), torch.device("cpu")), OnlineTeachers(ts, MAX_LEN, TOPK)
    model = model_for(TASKS, data).eval()
    x, weights = batch(data, rows), {"T1": 1, "T2": 1, "T3": 1}
    got = cached.targets(rows[::-1].copy(), x, None, None)                  # looked up by row, in any order
    from_online = online.targets(rows, x, data.targets["T3"][rows], data.is_labeled_train(rows))
    assert torch.equal(got["T3_tokens"], from_online["T3_tokens"].flip(0))
    a, b = (MultiTaskLoss(data, weights, alpha=0.5, tau=2.0, teachers=t)(model, x, rows) for t in (cached, online))
    assert torch.allclose(a, b, rtol=1e-3)                                  # fp16 logits in the cache


def test_the_paper_preset_distils_a_step_on_cpu():
    """ResNet-50 at 224 px with the paper's heads: one M2 step and a beam-search decode (no GPU, no weights)."""
    cfg = preset("paper", pretrained=None, max_len=8)          # fake_data writes sentences of 8 ids
    data = fake_data(n=4, size=cfg.image_size)
    torch.manual_seed(0)
    sizes = len(data.labels.coarse), len(data.labels.fine), len(data.vocab)
    teacher, student = (build_model(cfg, TASKS, *sizes) for _ in range(2))
    rows = np.arange(4)
    x = batch(data, rows)
    teachers = OnlineTeachers([teacher.eval()], cfg.max_len, cfg.t3_topk)
    loss = MultiTaskLoss(data, {}, alpha=cfg.alpha_grid[-1], tau=2.0, teachers=teachers)(student, x, rows)
    loss.backward()
    assert torch.isfinite(loss) and student.encoder[0].weight.grad.abs().sum() > 0
    sentences = student.eval().generate(x, cfg.max_len, cfg.beam_size)
    assert sentences.shape == (4, cfg.max_len) and (sentences[:, 0] == SOS_ID).all()
