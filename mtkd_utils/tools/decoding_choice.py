"""Which T3 decoder: greedy, beam search and minimum-Bayes-risk (MBR) decoding of a finished run's sentences, scored
on the VALIDATION split — the probe that chooses a preset's `beam_size` / `mbr_samples` (run on purpose; never
reads the test split).

Decoders "+ heads" (probe only; training runs decode without them) let the model's own T2 head choose among the
decoder's sentences: of beam search's k hypotheses (and, for MBR, the samples), only those naming the fine class
the T2 head predicts (the findings extractor) are candidates; where none does, all are.

--scst N ...: each decoder also after N updates of self-critical fine-tuning (train/scst.py, the run's own settings
otherwise; 0: the decoder as trained), the probe that chooses a preset's `t3_scst_steps`.

    python -m mtkd_utils.decoding_choice outputs/demo --p 70 --seed 0 --model M1
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from .. import runs
from ..analysis.captions import caption_metrics
from ..data.findings import extractor_for
from ..analysis.results import load_labels
from ..analysis.t3 import said
from ..data.dataset import batch_rows, image_batch
from ..data.text import mbr_index
from ..runs import RunKey
from ..train import reload, scst
from ..train.engine import predict
from ..train.runtime import eval_batch_size
from .cam_choice import run_key, run_parser

# each decoder's predict() arguments; MBR: the sampled sentence that agrees best with the image's other samples
DECODERS: dict[str, dict] = {"greedy": dict(beam_size=1), "beam 3": dict(beam_size=3), "beam 5": dict(beam_size=5),
                             "MBR 8": dict(mbr_samples=8), "MBR 16": dict(mbr_samples=16),
                             "MBR 32": dict(mbr_samples=32), "MBR 64": dict(mbr_samples=64),
                             "beam 10 + heads": dict(beam_size=10, heads=True),
                             "MBR 64 + heads": dict(mbr_samples=64, beam_size=5, heads=True)}
SHOWN = ("T3_bleu4", "T3_ciderD", "T3_findings_f1", "T3_fine_acc", "T3_eye_acc")


def validation_scores(experiment_dir, key: RunKey, decoders: Mapping[str, dict] = DECODERS,
                      metrics: Sequence[str] = SHOWN, seed: int = 0, scst_steps: Sequence[int] = (0,),
                      scst_lr: float | None = None, scst_findings: float | None = None) -> pd.DataFrame:
    """One row per (fine-tuning steps, decoder): its T3 metrics on the validation split and the seconds it took to
    decode it. scst_steps: self-critical updates before decoding (0: the run's own decoder, fine-tuned where the
    run was; N > 0: N updates from the maximum-likelihood decoder at scst_lr with the reward's findings weight
    scst_findings, defaults the run's t3_scst_lr and t3_scst_findings)."""
    trained, data = reload.load_student(experiment_dir, key, "cpu")
    cfg = runs.trained_model_config(experiment_dir, key)
    if trained.decoder is None:
        raise ValueError(f"{key.name}: tasks {'+'.join(key.tasks)} have no T3 decoder to choose for")
    rows, labels, out = data.rows("val"), load_labels(experiment_dir), []
    for steps in scst_steps:
        model = trained
        if steps:
            model = reload.load_model(runs.trained_model_dir(experiment_dir, key), cfg, data, key.tasks)
            findings = cfg.t3_scst_findings if scst_findings is None else scst_findings
            scst.finetune_decoder(model, data, cfg.updated(t3_scst_steps=steps, t3_scst_lr=scst_lr or cfg.t3_scst_lr,
                                                           t3_scst_findings=findings))
        for name, options in decoders.items():
            start = time.perf_counter()
            preds = decode(model, data, rows, cfg, labels, options, seed)
            scores = caption_metrics(preds, labels)
            out.append(dict(scst_steps=steps, decoder=name, n=len(preds), **{m: scores[m] for m in metrics},
                            seconds=round(time.perf_counter() - start, 1)))
    return pd.DataFrame(out)


def decode(model, data, rows, cfg, labels, options: dict, seed: int) -> pd.DataFrame:
    """The predictions table of one decoder (DECODERS' options) on `rows`."""
    heads = options.get("heads", False)
    preds = predict(model, data, rows, eval_batch_size(cfg), cfg.max_len, 1 if heads else options.get("beam_size", 1),
                    torch.device("cpu"), mbr_samples=0 if heads else options.get("mbr_samples", 0), seed=seed)
    if not heads:
        return preds
    return said(preds, heads_aware_sentences(model, data, rows, cfg, labels, options["beam_size"],
                                             options.get("mbr_samples", 0), seed))


@torch.no_grad()
def heads_aware_sentences(model, data, rows, cfg, labels, beam_size: int, mbr_samples: int = 0,
                          seed: int = 0) -> list[str]:
    """Per image, the decoder's sentence that names the fine class its T2 head predicts: the best such beam
    hypothesis, or with mbr_samples the MBR choice among such hypotheses and samples against all the samples."""
    if "T2" not in model.heads:
        raise ValueError("decoders '+ heads' need a model with a T2 head")
    model.eval()
    names, generator, out = extractor_for(labels).fine_class, torch.Generator().manual_seed(seed), []
    for b in batch_rows(rows, eval_batch_size(cfg), shuffle=False):
        feats = model.features(image_batch(data.images, b, torch.device("cpu")))
        fine = [data.labels.fine[i] for i in model.heads["T2"](feats).argmax(1).tolist()]
        hypotheses = model.decoder.beams(feats, cfg.max_len, beam_size).tolist()
        samples = model.decoder.sample(feats, cfg.max_len, mbr_samples, generator).tolist() if mbr_samples else None
        for i, f in enumerate(fine):
            candidates = [data.vocab.decode(t) for t in hypotheses[i] + (samples[i] if samples else [])]
            agree = [c for c in candidates if names(" ".join(c)) == f] or candidates
            best = mbr_index(candidates[beam_size:], agree) if samples else 0   # MBR's evidence: the samples
            out.append(" ".join(agree[best]))
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = run_parser(__doc__)
    ap.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=list(DECODERS))
    ap.add_argument("--scst", nargs="+", type=int, default=[0], metavar="N",
                    help="self-critical fine-tuning updates before decoding, e.g. 0 300 600 (default: 0)")
    ap.add_argument("--scst-lr", type=float, default=None, help="their learning rate (default: the run's)")
    ap.add_argument("--scst-findings", type=float, default=None,
                    help="the findings F1's weight in their reward (default: the run's t3_scst_findings)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    key = run_key(args)
    table = validation_scores(args.experiment, key, {d: DECODERS[d] for d in args.decoders}, scst_steps=args.scst,
                               scst_lr=args.scst_lr, scst_findings=args.scst_findings)
    print(f"{key.name}, seed {key.seed}: T3 on {table.n.iloc[0]} validation images per decoder "
          "(scst_steps: self-critical fine-tuning updates first)")
    print(table.round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
