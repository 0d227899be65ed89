"""The budget probe: M1's validation curve per (p, schedule), and the plateau measure on a hand-made history."""
import pandas as pd
import pytest

from mtkd_utils import plateau, prep
from mtkd_utils.presets import config as preset


def test_last_quarter_gain_on_a_hand_made_history():
    rising = pd.DataFrame({"updates": [10, 20, 30, 40], "val_score": [0.1, 0.3, 0.4, 0.6]})
    flat = pd.DataFrame({"updates": [10, 20, 30, 40], "val_score": [0.1, 0.5, 0.5, 0.45]})
    assert plateau.last_quarter_gain(rising) == pytest.approx(0.2)      # best late 0.6 - best before 0.4
    assert plateau.last_quarter_gain(flat) == pytest.approx(-0.05)
    assert pd.isna(plateau.last_quarter_gain(rising.iloc[:1]))           # one validation: nothing to compare


def test_the_probe_trains_a_schedule_of_the_asked_length(tmp_path):
    prep.prepare_data(tmp_path, preset("smoke"))
    table = plateau.main([str(tmp_path), "--preset", "smoke", "--p", "70", "--updates", "6"])
    row = table.iloc[0]
    assert (row.p, row.schedule) == (70, 6) and 0 < row.best_at <= 6 + 3   # the last epoch may run a few over
    assert not list(tmp_path.glob("teachers"))                              # scratch only: the experiment untouched
