"""The budget probe: M1's validation curve per (p, schedule length)."""
from mtkd_utils import plateau, prep
from mtkd_utils.presets import config as preset


def test_the_probe_trains_a_schedule_of_the_asked_length(tmp_path):
    prep.prepare_data(tmp_path, preset("smoke"))
    table = plateau.main([str(tmp_path), "--preset", "smoke", "--p", "70", "--updates", "6"])
    row = table.iloc[0]
    assert (row.p, row.schedule) == (70, 6) and 0 < row.best_at <= 6 + 3   # the last epoch may run a few over
    assert not list(tmp_path.glob("teachers"))                              # scratch only: the experiment untouched
