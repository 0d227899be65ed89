"""The budget probe: M1's validation curve per (p, schedule length)."""
import pandas as pd

from mtkd_utils.config import TASKS
from mtkd_utils.data import prep
from mtkd_utils.data.dataset import load_data
from mtkd_utils.presets import config as preset
from mtkd_utils.runs import RunKey
from mtkd_utils.tools import plateau
from mtkd_utils.train import steps


def test_the_probe_trains_a_schedule_of_the_asked_length(tmp_path):
    prep.prepare_data(tmp_path, preset("smoke"))
    table = plateau.main([str(tmp_path), "--preset", "smoke", "--p", "70", "--updates", "6"])
    row = table.iloc[0]
    assert (row.p, row.schedule) == (70, 6) and 0 < row.best_at <= 6 + 3   # the last epoch may run a few over
    assert not list(tmp_path.glob("teachers"))                              # scratch only: the experiment untouched


def test_the_probe_retraces_m1s_teacher_run(tmp_path):
    """Same initialisation, same data order: on the teacher's own schedule the probe is the teacher's run."""
    cfg = preset("smoke")
    prep.prepare_data(tmp_path, cfg)
    run = steps.train_teacher(tmp_path, RunKey(TASKS, 70, 0), cfg, load_data(tmp_path, 70, cfg))
    teacher = pd.read_csv(run / "history.csv")
    probe = plateau.curve(tmp_path, 70, None, "smoke")
    assert len(teacher) >= 2
    pd.testing.assert_series_equal(probe.val_score.reset_index(drop=True), teacher.val_score, check_exact=False,
                                   rtol=1e-9)
