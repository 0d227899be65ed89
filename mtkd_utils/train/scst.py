"""T3 self-critical fine-tuning (Rennie et al. 2017): after training, the decoder alone learns to write the sentences
that score best, with REINFORCE and a reward per sentence, as captioning and report-generation work does.

Teacher forcing teaches the likely next word; what a reader scores is the whole sentence against the reference.
Here the decoder samples `t3_scst_samples` sentences per labeled training image, each is rewarded by its sentence
BLEU-4 against the image's reference (plus `t3_scst_findings` x the F1 of the findings it states, data/findings.py:
a BLEU reward alone buys wording, not clinical content), and its log-probability is pushed up or down by how much
it beats the mean reward of the image's other samples (the baseline of Kool et al. 2019, no greedy decode needed).
The encoder and heads are frozen (the image features are computed once, without augmentation): T1 and T2 do not
change. The fine-tuned decoder is kept only where it scores higher on the validation split than the decoder as trained, by
what the reward asks for: corpus BLEU-4 + `t3_scst_findings` x findings micro F1 (decoded as the test split will
be); with few training sentences it memorises them, and the run keeps the maximum-likelihood decoder (both
scores go to metrics.json).

Only the run's own sentences use the fine-tuned decoder (students/<tasks>/p<P>_s<seed>/<model>/t3_scst.pt); a teacher
checkpoint keeps its maximum-likelihood decoder, whose distribution over words is what the students distil (the
fine-tuned one has collapsed onto a few sentences).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import FundusData, batch_rows, image_batch
from ..data.findings import extractor_for, finding_scores, sentence_f1
from ..data.text import EOS_ID, PAD_ID, SOS_ID, Ngrams, ngram_bleu4, tokenize
from ..progress import progress
from .checkpoint import load_checkpoint, save_checkpoint
from .engine import predict
from .metrics import text_metrics
from .runtime import eval_batch_size

SCST_FILE = "t3_scst.pt"
IMAGES_PER_STEP = 32


def sample_with_log_probs(decoder, feats: torch.Tensor, max_len: int, n: int, generator: torch.Generator
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """n sentences per image drawn word by word (temperature 1): token ids (B*n, T) after <sos>, and each
    sentence's log-probability (B*n,) of the words drawn, differentiable (an <eos> forced at max_len was not drawn).
    Image b's samples are rows b*n ... b*n + n - 1."""
    h, c = (s.repeat_interleave(n, dim=1) for s in decoder.init_state(feats))
    word = torch.full((feats.shape[0] * n,), SOS_ID, dtype=torch.long, device=feats.device)
    done = torch.zeros_like(word, dtype=torch.bool)
    words, log_probs = [], []
    for t in range(1, max_len):
        y, (h, c) = decoder.lstm(decoder.embed(word[:, None]), (h, c))
        logits = decoder.out(y[:, 0]).float()
        logits[:, [PAD_ID, SOS_ID]] = float("-inf")                  # never inside a sentence
        logp = F.log_softmax(logits, dim=-1)
        word = torch.multinomial(logp.detach().exp(), 1, generator=generator)[:, 0]
        forced = t == max_len - 1                                     # the last slot closes the sentence: not drawn
        word = torch.full_like(word, EOS_ID) if forced else word
        log_probs.append(torch.where(done | forced, 0.0, logp.gather(1, word[:, None])[:, 0]))
        word = torch.where(done, PAD_ID, word)
        words.append(word)
        done = done | (word == EOS_ID)
        if done.all():
            break
    return torch.stack(words, 1), torch.stack(log_probs, 1).sum(1)


class Reference(NamedTuple):
    """What a sampled sentence is scored against: the reference's n-grams and the findings it states."""
    ngrams: Ngrams
    findings: frozenset


def rewards(sentences: list[list[str]], references: list[Reference], n: int, findings_weight: float = 0.0,
            extractor=None) -> torch.Tensor:
    """(B, n): each sampled sentence's sentence BLEU-4 (smoothed, data/text.py) against its image's reference,
    plus findings_weight x the F1 of the findings it states against the reference's (data/findings.py)."""
    def reward(words: list[str], ref: Reference) -> float:
        bleu = ngram_bleu4(Ngrams(words), ref.ngrams)
        return bleu + findings_weight * sentence_f1(extractor(" ".join(words)), ref.findings) if findings_weight else bleu
    return torch.tensor([reward(s, references[i // n]) for i, s in enumerate(sentences)]).reshape(-1, n)


def self_critical_loss(reward: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the leave-one-out baseline: each sample's advantage is its reward minus the mean reward of
    its image's other samples. reward (B, n), log_prob (B*n,)."""
    n = reward.shape[1]
    advantage = reward - (reward.sum(1, keepdim=True) - reward) / (n - 1)
    return -(advantage.reshape(-1) * log_prob).mean()


@torch.no_grad()
def frozen_features(model, data: FundusData, rows: np.ndarray, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(image_batch(data.images, b, torch.device("cpu")))
                      for b in batch_rows(rows, batch_size, shuffle=False)]).float()


def finetune_decoder(model, data: FundusData, cfg, run: Path | None = None) -> dict:
    """Fine-tune model.decoder in place for cfg.t3_scst_steps updates on the labeled training images with a sentence
    (seeded by cfg.seed, on the CPU, where the decoder is cheap), and keep it only if its validation objective
    rises (else the decoder as trained is put back); a kept one is saved to run/t3_scst.pt when run is given.
    Returns what metrics.json records: kept, validation BLEU-4 (and findings F1) before and after, steps, learning
    rate, samples, images, mean reward of the first and last 50 updates, seconds."""
    start, device = time.perf_counter(), next(model.parameters()).device
    model.cpu()
    rows = data.rows("train")
    rows = rows[data.manifest.text.iloc[rows].to_numpy() != ""]
    if len(rows) == 0 or len(data.rows("val")) == 0:
        raise ValueError("t3_scst_steps > 0 needs labeled training images with a sentence and a validation split "
                         f"(here {len(rows)} and {len(data.rows('val'))} images); set t3_scst_steps=0")
    extractor = extractor_for(data.labels) if cfg.t3_scst_findings else None
    trained, before = copy.deepcopy(model.decoder.state_dict()), validation_scores(model, data, cfg, extractor)
    references = [Reference(Ngrams(tokenize(t)), extractor(t) if extractor else frozenset())
                  for t in data.manifest.text.iloc[rows]]
    history = self_critical(model.decoder, frozen_features(model, data, rows, eval_batch_size(cfg)), references,
                            data.vocab, cfg, extractor)
    after = validation_scores(model, data, cfg, extractor)
    kept = objective(after, cfg) > objective(before, cfg)
    if not kept:
        model.decoder.load_state_dict(trained)
    elif run is not None:
        save_checkpoint(Path(run) / SCST_FILE, {"decoder": model.decoder.state_dict()})
    model.to(device)
    return dict(kept=bool(kept), **{f"val_{k}_before": v for k, v in before.items()},
                **{f"val_{k}_after": v for k, v in after.items()}, steps=cfg.t3_scst_steps,
                lr=cfg.t3_scst_lr, samples=cfg.t3_scst_samples, findings_weight=cfg.t3_scst_findings, images=len(rows),
                reward_first=float(np.mean(history[:50])), reward_last=float(np.mean(history[-50:])),
                seconds=round(time.perf_counter() - start, 1))


def objective(scores: dict[str, float], cfg) -> float:
    """What the keep rule compares: validation BLEU-4, plus t3_scst_findings x findings F1 when the reward has it."""
    return scores["bleu4"] + (cfg.t3_scst_findings * scores["findings_f1"] if cfg.t3_scst_findings else 0.0)


def self_critical(decoder, feats: torch.Tensor, references: list[Reference], vocab, cfg, extractor=None) -> list[float]:
    """The fine-tuning loop: cfg.t3_scst_steps Adam updates, each on IMAGES_PER_STEP images drawn from feats
    (seeded by cfg.seed); returns the mean reward of each update."""
    n, optimizer = cfg.t3_scst_samples, torch.optim.Adam(decoder.parameters(), lr=cfg.t3_scst_lr)
    generator, pick = torch.Generator().manual_seed(cfg.seed), np.random.default_rng(cfg.seed)
    history, bar = [], progress(range(cfg.t3_scst_steps), "T3 self-critical fine-tuning")
    decoder.train()
    for step in bar:
        batch = pick.choice(len(feats), min(IMAGES_PER_STEP, len(feats)), replace=False)
        tokens, log_prob = sample_with_log_probs(decoder, feats[batch], cfg.max_len, n, generator)
        reward = rewards([vocab.decode(t) for t in tokens.tolist()], [references[i] for i in batch], n,
                         cfg.t3_scst_findings, extractor)
        loss = self_critical_loss(reward, log_prob)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        history.append(float(reward.mean()))
        if step % 50 == 49:
            bar.set_postfix(reward=f"{np.mean(history[-50:]):.3f}")
    decoder.eval()
    return history


def validation_scores(model, data: FundusData, cfg, extractor=None) -> dict[str, float]:
    """Corpus BLEU-4 of the model's sentences on the validation split, decoded as the test split is ("bleu4"),
    and with an extractor the micro F1 of the findings they state ("findings_f1", data/findings.py)."""
    preds = predict(model, data, data.rows("val"), eval_batch_size(cfg), cfg.max_len, cfg.beam_size,
                    torch.device("cpu"), mbr_samples=cfg.mbr_samples, seed=cfg.seed)
    truth, said = list(preds.text_true), list(preds.text_pred)
    scores = {"bleu4": float(text_metrics(truth, said)["T3_bleu4"])}
    if extractor is not None:
        scores["findings_f1"] = finding_scores([extractor(t) for t in truth], [extractor(t) for t in said])["f1_micro"]
    return scores


def load_finetuned_decoder(model, run: Path) -> bool:
    """Put a run's fine-tuned decoder (t3_scst.pt) into model, if the run has one."""
    path = Path(run) / SCST_FILE
    if not path.exists():
        return False
    model.decoder.load_state_dict(load_checkpoint(path)["decoder"])
    return True
