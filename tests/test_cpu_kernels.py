"""The reproducibility probe (tools/cpu_kernels): the same run under other CPU kernels, each in its own process."""
import pytest

from mtkd_utils import presets
from mtkd_utils.data import prep
from mtkd_utils.tools import cpu_kernels


def test_the_same_kernels_reproduce_byte_for_byte_and_other_kernels_are_measured(tmp_path):
    exp = tmp_path / "exp"
    prep.prepare_data(exp, presets.config("smoke"))
    table = cpu_kernels.measure(exp, 15, ["native", "native", "avx2"], preset="smoke", out_dir=tmp_path / "kept")
    native, again, avx2 = (row for _, row in table.iterrows())
    # the control: a second process on this machine and build trains the very same weights
    assert again.identical_weights and again.max_weight_diff == 0 and again.capability == native.capability
    assert again[["T1_changed", "T2_changed", "T3_changed", "max_d_val_score"]].tolist() == [0, 0, 0, 0]
    assert again.d_T1_acc == again.d_T2_acc == 0
    # the other kernels are in force (this machine has AVX2 or better), and what moved is measured, not assumed
    assert avx2.capability == "AVX2" and native.capability != "DEFAULT"
    assert avx2.identical_weights == (avx2.max_weight_diff == 0)
    assert 0 <= avx2.T1_changed <= 1 and avx2.n_val == native.n_val > 0
    assert (tmp_path / "kept" / "2_avx2" / "weights.pt").exists()


def test_bad_variants_and_folders_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="avx3"):
        cpu_kernels.check_variants(["native", "avx3"])
    with pytest.raises(ValueError, match="at least two"):
        cpu_kernels.check_variants(["native"])
    with pytest.raises(FileNotFoundError, match="01_data_prep"):
        cpu_kernels.measure(tmp_path, 15, ["native", "avx2"], preset="smoke")
