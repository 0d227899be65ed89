"""A T3 model that decodes only empty sentences still gets T3 metrics (BLEU 0), so val_score can rank it."""
import pandas as pd

from mtkd_utils.data.manifest import LabelMap
from mtkd_utils.train.metrics import task_metrics, val_score

LABELS = LabelMap.from_pairs(["a", "b"], [("a1", "a"), ("b1", "b")])
PREDS = pd.DataFrame(dict(coarse_true=["a", "b"], coarse_pred=["a", "a"], fine_true=["a1", "b1"],
                          fine_pred=["a1", "a1"], fine_top5=["a1|b1", "a1|b1"],
                          text_true=["left eye: x.", "right eye: y."], text_pred=["", ""], bleu=[0.0, 0.0]))


def test_empty_sentences_score_zero_bleu():
    m = task_metrics(PREDS, LABELS)
    assert m["T3_bleu4"] == 0.0 and val_score(m, ("T1", "T2", "T3")) == (0.5 + 0.5 + 0.0) / 3


def test_a_model_without_t3_gets_no_t3_metrics():
    m = task_metrics(PREDS.assign(text_pred="", bleu=""), LABELS)   # predict() leaves both empty without a decoder
    assert not any(k.startswith("T3") for k in m)
