import math

import torch
import torch.nn.functional as F

from mtkd_utils.train import losses


def test_kd_equals_tau_squared_kl_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[0.5, 0.0, 3.0]])
    tau = 2.0
    ps = [math.exp(v / tau) for v in (1.0, 2.0, 0.0)]
    pt = [math.exp(v / tau) for v in (0.5, 0.0, 3.0)]
    ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
    expected = tau**2 * sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert abs(losses.kd(s, t, tau).item() - expected) < 1e-6
    assert losses.kd(t, t, tau).abs().item() < 1e-7          # no loss when the student agrees


def test_kd_is_per_example_not_divided_by_classes():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    batchmean = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")
    assert torch.allclose(losses.kd(s, t, 1.0).mean(), batchmean, atol=1e-6)


def test_kd_gradients_reach_the_student_only():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    losses.kd(s, t, 4.0).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_ce_ignores_unlabeled_rows():
    logits = torch.randn(3, 4)
    out = losses.ce(logits, torch.tensor([1, -1, 2]))
    expected = F.cross_entropy(logits[[0, 2]], torch.tensor([1, 2]), reduction="none")
    assert out[1] == 0 and torch.allclose(out[[0, 2]], expected)


def test_caption_losses_mask_padding():
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0]])               # <sos> w w <eos> <pad> <pad>
    logits = torch.randn(1, 5, 8)
    expected = F.cross_entropy(logits[0, :3], torch.tensor([5, 6, 2]))
    assert torch.allclose(losses.caption_ce(logits, tokens), expected.view(1))
    teacher = torch.randn(1, 5, 8)
    val, idx = teacher.topk(8, dim=-1)                        # k = vocabulary: exact word-level KD
    per_step = losses.kd(logits[0, :3], teacher[0, :3], 2.0)
    assert torch.allclose(losses.caption_kd(logits, val, idx, tokens, 2.0), per_step.mean().view(1), atol=1e-5)
