"""Nothing lost, nothing leaked: resume after a real kill, atomic files, refusals, reproducibility."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtkd_utils import runs
from mtkd_utils.data import prep
from mtkd_utils.data.dataset import image_batch, load_data
from mtkd_utils.io import atomic_path
from mtkd_utils.presets import config as preset
from mtkd_utils.runs import RunKey
from mtkd_utils.train import reload, steps
from mtkd_utils.train.checkpoint import save_checkpoint
from mtkd_utils.train.engine import MultiTaskLoss

CFG = preset("smoke", epochs=5, patience=10)
TRAIN = """
import sys
from mtkd_utils.train import runtime, steps
from mtkd_utils.runs import RunKey
from mtkd_utils.presets import config as preset
from mtkd_utils.data.dataset import load_data
cfg = preset("smoke", epochs=5, patience=10, threads=1)
runtime.setup_runtime(cfg)
steps.train_teacher(sys.argv[1], RunKey(("T1", "T2"), 15, 0), cfg, load_data(sys.argv[1], 15, cfg))
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("prepared")
    prep.prepare_data(exp, CFG)
    return exp


def copy_experiment(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "data", dst / "data")
    return dst


def train_in_subprocess(exp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAIN, str(exp)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_training_resumes_to_the_same_weights(prepared, tmp_path):
    whole = copy_experiment(prepared, tmp_path / "whole")
    killed = copy_experiment(prepared, tmp_path / "killed")
    assert train_in_subprocess(whole).wait() == 0
    proc = train_in_subprocess(killed)
    last = runs.teacher_dir(killed, runs.RunKey(("T1", "T2"), 15, 0)) / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)                            # a real kill, mid-training
    proc.wait()
    assert last.exists(), "the run finished before it could be killed; the test needs more epochs"
    assert not (last.parent / "metrics.json").exists()
    epochs_done = torch.load(last, weights_only=True)["progress"]["epoch"]
    assert 1 <= epochs_done < 5
    assert train_in_subprocess(killed).wait() == 0            # resumes from last.pt
    a = torch.load(runs.teacher_dir(whole, runs.RunKey(("T1", "T2"), 15, 0)) / "checkpoint.pt", weights_only=True)
    b = torch.load(last.parent / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert not last.exists()                                    # cleaned up once finished


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_same_seed_same_numbers_and_run_folders_are_never_overwritten(prepared, tmp_path):
    cfg = preset("smoke", epochs=1)
    runs = []
    for name in ("a", "b"):
        exp = copy_experiment(prepared, tmp_path / name)
        data = load_data(exp, 15, cfg)
        steps.train_teacher(exp, RunKey(("T1", "T3"), 15, 0), cfg, data)
        runs.append(steps.run_student(exp, RunKey(("T1", "T3"), 15, 0, "M1"), cfg, data))
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["val"] == runs[1]["val"]
    exp = tmp_path / "a"
    with pytest.raises(FileExistsError, match="other settings.*lr"):
        steps.train_teacher(exp, RunKey(("T1", "T3"), 15, 0), cfg.updated(lr=0.1), load_data(exp, 15, cfg))
    with pytest.raises(FileExistsError, match="prepared from other data or splits"):
        prep.prepare_data(exp, cfg.updated(split_seed=1))


def test_a_checkpoint_from_another_setting_is_refused(prepared, tmp_path):
    exp = copy_experiment(prepared, tmp_path / "x")
    cfg = preset("smoke", epochs=1)
    data = load_data(exp, 15, cfg)
    run = steps.train_teacher(exp, RunKey(("T1",), 15, 0), cfg, data)
    with pytest.raises(ValueError, match="backbone: checkpoint has 'mobilenet_v3_small', expected 'resnet18'"):
        reload.load_model(run, cfg.updated(backbone="resnet18"), data, ("T1",))
    with pytest.raises(ValueError, match="tasks"):
        reload.load_model(run, cfg, data, ("T1", "T2"))
    data.vocab.itos.append("newword")                          # another vocabulary (or label map) is refused too
    with pytest.raises(ValueError, match="vocab"):
        reload.load_model(run, cfg, data, ("T1",))


def test_the_soft_target_cache_is_built_once_and_rebuilt_when_a_teacher_changes(prepared, tmp_path):
    exp = copy_experiment(prepared, tmp_path / "x")
    cfg = preset("smoke", epochs=1)
    data = load_data(exp, 15, cfg)
    run = steps.train_teacher(exp, RunKey(("T1", "T3"), 15, 0), cfg, data)
    cache = runs.student_dir(exp, runs.RunKey(("T1", "T3"), 15, 0, "M2")) / "soft_targets.pt"

    def teachers(kd_mode="cached"):
        return reload.student_teachers(exp, RunKey(("T1", "T3"), 15, 0, "M2"), cfg.updated(kd_mode=kd_mode), data)

    cached, built = teachers(), cache.stat().st_mtime_ns
    teachers()
    assert cache.stat().st_mtime_ns == built                    # every tau reuses it
    rows = data.rows("unlabeled")[:6]
    x = image_batch(data.images, rows, torch.device("cpu"))
    a = cached.targets(rows, x, None, None)
    b = teachers("online").targets(rows, x, data.targets["T3"][rows], data.is_labeled_train(rows))
    assert torch.equal(a["T3_tokens"], b["T3_tokens"]) and torch.allclose(a["T1"], b["T1"], atol=1e-2)
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # the teacher changes under it
    state["model"]["heads.T1.3.bias"] += 1.0
    save_checkpoint(run / "checkpoint.pt", state)              # (torch.save alone would be refused as damage)
    after = teachers().targets(rows, x, None, None)
    assert cache.stat().st_mtime_ns != built and torch.allclose(after["T1"], a["T1"] + 1.0, atol=1e-2)


def test_non_finite_loss_names_the_step_and_task(prepared):
    cfg = preset("smoke")
    data = load_data(prepared, 15, cfg)
    model = steps.new_model(cfg, data, ("T1", "T2"), 0)
    with torch.no_grad():
        model.heads["T2"][-1].bias.fill_(float("nan"))
    rows = data.rows("train")[:4]
    x = torch.from_numpy(np.array(data.images[rows])).permute(0, 3, 1, 2).float() / 255
    loss_fn = MultiTaskLoss(data, {}, alpha=0.9)
    loss_fn.step = 6                                          # six batches went well
    with pytest.raises(FloatingPointError, match="non-finite T2 loss at step 7"):
        loss_fn(model, x, rows)


def test_no_validation_or_test_image_reaches_training(prepared):
    data = load_data(prepared, 30, CFG)
    held = set(data.rows("val")) | set(data.rows("test"))
    assert not held & (set(data.rows("train")) | set(data.rows("unlabeled")))
    patients = data.roles.patient_id.to_numpy()
    assert not set(patients[list(held)]) & set(patients[np.concatenate([data.rows("train"), data.rows("unlabeled")])])


def test_tau_and_early_stopping_never_read_test_labels(prepared, tmp_path):
    """Scrambling every test label changes nothing that training, early stopping or the tau choice saw."""
    cfg = preset("smoke", epochs=2, student_passes=2.0)
    searches = []
    for name, scramble in (("clean", False), ("scrambled", True)):
        exp = copy_experiment(prepared, tmp_path / name)
        data = load_data(exp, 15, cfg)
        if scramble:
            test = torch.from_numpy(data.rows("test"))
            g = torch.Generator().manual_seed(1)
            for task in ("T1", "T2"):
                data.targets[task][test] = torch.randint(0, 3, (len(test),), generator=g)
            data.targets["T3"][test] = data.targets["T3"][test.flip(0)]
            rows = data.rows("test")
            for col in ("coarse", "fine", "text"):                 # the truth that metrics read
                data.manifest.loc[rows, col] = data.manifest.loc[rows[::-1], col].to_numpy()
        steps.train_teacher(exp, RunKey(("T1", "T2", "T3"), 15, 0), cfg, data)
        searches.append([steps.train_student(exp, RunKey(("T1", "T2", "T3"), 15, 0, "M2"), tau, alpha, cfg, data)
                         for tau in cfg.tau_grid for alpha in cfg.alpha_grid])
    assert searches[0] == searches[1]


def test_val_every_spaces_the_validations_and_keeps_the_last(prepared, tmp_path):
    exp = copy_experiment(prepared, tmp_path / "spaced")
    cfg = CFG.updated(val_every=2)                      # smoke at p=15: one update per epoch -> every 2nd epoch
    data = load_data(exp, 15, cfg)
    run = steps.train_teacher(exp, RunKey(("T1",), 15, 0), cfg, data)
    history = pd.read_csv(run / "history.csv")
    assert list(history.updates / history.epoch) == [1.0] * len(history)   # the premise: one update per epoch
    assert list(history.epoch) == [2, 4, 5]             # every 2nd epoch, and always the last


def test_a_run_recorded_before_an_option_existed_holds_its_default(tmp_path):
    """Upgrading keeps finished runs: a config.json without a newer field means that field's default."""
    cfg = preset("smoke")
    runs.claim_run(tmp_path, cfg, kind="teacher")
    record = json.loads((tmp_path / "config.json").read_text())
    del record["config"]["mbr_samples"]                         # as written before MBR decoding existed
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert runs.refuse_other_settings(tmp_path, cfg, kind="teacher")
    with pytest.raises(FileExistsError, match="other settings.*mbr_samples"):
        runs.claim_run(tmp_path, cfg.updated(mbr_samples=8), kind="teacher")


def test_numpy_blas_follows_config_threads(tmp_path):
    """A kernel started by the sync runner inherits every core; one on a Dask worker OMP_NUM_THREADS=1. Both must
    compute with Config.threads BLAS threads, or a bootstrap's matrix product rounds differently."""
    code = ("from threadpoolctl import threadpool_info\n"
            "from mtkd_utils.train import runtime\nfrom mtkd_utils.presets import config\n"
            "runtime.setup_runtime(config('smoke', threads=1))\n"
            "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1]"
