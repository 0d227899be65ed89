"""The speed benchmark runs end to end on a tiny setting (no timing assertions: timings belong to the script)."""
import numpy as np
import pytest
import torch

from mtkd_utils.data.text import PAD_ID, SOS_ID
from mtkd_utils.tools import bench
from mtkd_utils.tools.bench_setup import synthetic_data
from mtkd_utils.tools.bench_timing import MODES

TINY = ["--image-size", "32", "--batch-size", "4", "--steps", "2", "--repeats", "1", "--threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def keep_torch_settings():
    """benchmark() sets threads and determinism as runtime.setup_runtime does: give the other tests theirs back."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def test_benchmark_reports_every_mode_with_positive_numbers():
    result = bench.benchmark(bench.parse_args(TINY + ["--no-memory"]))
    table, ratios = result["table"], result["ratios"]
    assert list(table.index) == list(MODES)
    assert (table[["images/s", "ms/step"]] > 0).all().all()
    assert list(ratios.index) == list(bench.TARGETS)
    assert (ratios["median"] > 0).all()
    assert {"cpu", "torch", "device", "torch threads"} <= set(result["machine"])


def test_cpu_formats_time_every_setting_against_fp32():
    table = bench.cpu_formats(bench.parse_args(TINY + ["--cpu-formats"]))
    assert list(table.setting) == list(bench.CPU_FORMATS) and (table["M1 images/s"] > 0).all()
    assert table["speed-up"].iloc[0] == 1.0


def test_peak_memory_of_a_mode_in_a_fresh_process():
    mem = bench.memory_in_subprocess("M3-cached", TINY)
    assert mem["peak_MB"] > 0 and mem["train_MB"] >= 0


def test_synthetic_data_has_labeled_and_unlabeled_rows_with_sentences():
    data = synthetic_data(10, 32, max_len=30)
    labeled = data.is_labeled_train(np.arange(10)).numpy()
    assert labeled.sum() == 5 and data.images.shape == (10, 32, 32, 3)
    assert (data.targets["T1"][~labeled] == -1).all() and (data.targets["T1"][labeled] >= 0).all()
    assert (data.targets["T3"][labeled, 0] == SOS_ID).all() and (data.targets["T3"][~labeled] == PAD_ID).all()
