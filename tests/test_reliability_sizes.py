"""Issue 33.4: an image_size some notebook of the grid cannot use is refused at plan time, naming one that works."""
import re
import warnings

import pytest
import torch

from mtkd_utils.analysis import cam
from mtkd_utils.grid import batch
from mtkd_utils.grid.plan_checks import check_image_size, notebook_default
from mtkd_utils.presets import config as preset
from mtkd_utils.train.model import build_model

GRADCAM = batch.REPO_ROOT / batch.NOTEBOOKS["gradcam"]


def refusal(image_size: int, **overrides) -> tuple[str, int, int | None]:
    """The plan-time message for this size, the smallest size it names, and the nearest above it (or None)."""
    with pytest.raises(ValueError) as err:
        check_image_size(preset("smoke", image_size=image_size, **overrides), GRADCAM)
    found = re.search(r"smallest image_size that works here is (\d+)(?:, the nearest above \d+ is (\d+))?", str(err.value))
    return str(err.value), int(found[1]), int(found[2]) if found[2] else None


def cams_at(size: int, allow_constant: bool = False, **overrides) -> torch.Tensor:
    """What notebook 05 does at this size: the block at its cam_stride, then CAMs (an untrained model, whose CAM on
    a 2 x 2 map may be flat by chance: allow_constant keeps those, and a 1 x 1 map is refused all the same)."""
    cfg = preset("smoke", image_size=size, **overrides)
    torch.manual_seed(0)                               # one initialisation: some random ones give a constant CAM
    model = build_model(cfg, ("T1",), 3, 3, 10).eval()
    block = cam.block_at_stride(model, notebook_default(GRADCAM, "cam_stride"), size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if allow_constant else "error")   # else a constant CAM fails the test
        return cam.compute_cams(model, torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)),
                                "T1", [0, 1], method="layercam", block=block, allow_constant=allow_constant)


def test_image_size_7_is_refused_by_the_batch_command_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        batch.main(["--preset", "smoke", "--set", "image_size=7", "--experiment-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and not (tmp_path / "e").exists()
    assert "image_size=7 (backbone='mobilenet_v3_small', output_stride=32): notebook 05 computes CAMs at output " \
           "stride cam_stride=8" in err and "--set image_size=" in err


@pytest.mark.parametrize("overrides", [{}, {"backbone": "resnet18"}, {"output_stride": 16}])
def test_the_named_smallest_size_works_in_notebook_05_and_the_one_below_does_not(overrides):
    message, smallest, _ = refusal(7, **overrides)
    assert cams_at(smallest, allow_constant=True, **overrides).shape == (2, smallest, smallest)
    with pytest.raises((ValueError, UserWarning)):    # no block at the stride, or a constant 1 x 1 CAM
        cams_at(smallest - 1, **overrides)


def test_a_size_between_working_ones_names_the_nearest_above():
    # mobilenet_v3_small at 20 px: maps 10, 5, 3 -> strides 2, 4, 7: no stride-8 block, though 16 and 24 have one
    message, smallest, above = refusal(20)
    assert "output strides [2, 4, 7, 10, 20]" in message and smallest < 20 < above
    assert cams_at(above).shape == (2, above, above)
    assert message.endswith(f"--set image_size={above}")


@pytest.mark.parametrize("name", ["smoke", "demo"])
def test_the_presets_own_sizes_pass(name):
    check_image_size(preset(name), GRADCAM)
