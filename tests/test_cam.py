"""CAMs on tiny random models for every backbone, the figure files (scores: test_localisation.py)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import nn

from mtkd_utils.analysis.cam import (
    METHODS,
    CamError,
    TaskOutput,
    block_at_stride,
    block_strides,
    cam_extractor,
    check_cams,
    compute_cams,
    figure_rows,
    gradcam_figure,
    predicted_classes,
    randomized_copy,
    target_layer,
)
from mtkd_utils.train.model import SUPPORTED_BACKBONES, MTLModel

PX = 64   # every backbone reduces 64 px to a 2 x 2 map: the smallest size with something to localise


def tiny_model(backbone: str, seed: int = 0) -> MTLModel:
    """A random T1+T2 model whose BatchNorm statistics come from one batch, as a trained model's would.

    Without this, eval-mode BatchNorm (mean 0, var 1) lets a deep random net's activations vanish: every
    image gets the same logits and Grad-CAM finds no positive evidence, which says nothing about the code.
    """
    torch.manual_seed(seed)
    model = MTLModel(("T1", "T2"), n_coarse=5, n_fine=8, vocab_size=20, backbone=backbone, head_hidden=16)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None                        # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.rand(4, 3, PX, PX, generator=torch.Generator().manual_seed(seed + 1)))
    return model.eval()


def images(n: int = 2, seed: int = 100, px: int = PX) -> torch.Tensor:
    return torch.rand(n, 3, px, px, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads; on a busy 2-core machine their spinning makes these tests ~8x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def light() -> MTLModel:
    return tiny_model("mobilenet_v3_small")


def assert_valid(cams: np.ndarray, n: int, px: int = PX) -> None:
    assert cams.shape == (n, px, px)
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    assert (np.ptp(cams.reshape(n, -1), axis=1) > 0).all()


# ---------------------------------------------------------------- CAMs

@pytest.mark.parametrize("backbone", SUPPORTED_BACKBONES)
def test_every_backbone_gives_valid_gradcams(backbone):
    model = tiny_model(backbone)
    layer = target_layer(model)
    assert layer is model.cam_layer and any(layer is m for m in model.encoder.children())
    assert target_layer(TaskOutput(model, "T1")) is layer
    cams = compute_cams(model, images(), task="T1")
    assert_valid(cams, 2)


def test_cams_at_a_chosen_stride(light):
    """block_at_stride finds the last block of a stride (mobilenet_v3_small at 64 px: 8 x 8 maps end at block 3);
    CAMs there are valid and differ from the last block's; an absent stride is refused with the ones there are."""
    strides = block_strides(light, PX)
    assert strides == sorted(strides) and strides[0] == 2 and strides[-1] == 32
    block = block_at_stride(light, 8, PX)
    assert strides[block] == 8 and strides[block + 1] == 16 and block_at_stride(light, None, PX) is None
    assert target_layer(light, block) is light.encoder[block] and target_layer(light, None) is light.cam_layer
    fine = compute_cams(light, images(), task="T1", targets=[1, 1], block=block, method="layercam")
    assert_valid(fine, 2)
    assert not np.allclose(fine, compute_cams(light, images(), task="T1", targets=[1, 1], method="layercam"))
    with pytest.raises(ValueError, match=r"cam_stride=5: .*strides \[2, 4, 8, 16, 32\]"):
        block_at_stride(light, 5, PX)
    with pytest.raises(ValueError, match="blocks 0..12"):
        target_layer(light, 13)


def manual_gradcam(model: MTLModel, x: torch.Tensor, task: str, k: int) -> np.ndarray:
    """Grad-CAM written out (Selvaraju et al. 2017) for class k: ReLU(sum_c mean(dy/dA_c) A_c), scaled as the
    package does."""
    store = {}
    def keep(module, inputs, output):
        output.retain_grad()
        store["A"] = output
    handle = model.cam_layer.register_forward_hook(keep)
    try:
        model(x)[task][:, k].sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    A, G = store["A"].detach(), store["A"].grad                # (B, C, h, w)
    raw = torch.relu((G.mean(dim=(2, 3), keepdim=True) * A).sum(1)).numpy()   # (B, h, w)
    return scale_cam_image(raw, (x.shape[-1], x.shape[-2]))


@pytest.mark.filterwarnings("ignore:.*constant")
@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5"])
def test_cams_are_gradcam_for_the_given_class(backbone):
    model = tiny_model(backbone)
    x = images(3)
    preds = predicted_classes(model, x, "T2")
    np.testing.assert_array_equal(preds, model(x)["T2"].argmax(1).numpy())
    np.testing.assert_allclose(compute_cams(model, x, task="T2"),               # default: the predicted class
                               compute_cams(model, x, task="T2", targets=preds), atol=1e-6)
    for k in range(8):                                                           # every class of the T2 head
        got = compute_cams(model, x, task="T2", targets=[k] * 3, allow_constant=True)
        np.testing.assert_allclose(got, manual_gradcam(model, x, "T2", k), atol=1e-4)


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "eigengradcam",
                                    "scorecam"])
def test_other_methods(light, method):
    assert_valid(compute_cams(light, images(1), method=method, allow_constant=False), 1)


def test_unknown_method_lists_the_allowed_names(light):
    with pytest.raises(ValueError, match="gradcam\\+\\+.*scorecam"):
        compute_cams(light, images(1), method="gradcam--")
    assert {"gradcam", "gradcam++", "eigencam", "scorecam", "xgradcam", "layercam", "hirescam"} <= set(METHODS)


def test_bad_task_and_targets(light):
    with pytest.raises(ValueError, match="T3"):
        compute_cams(light, images(1), task="T3")
    with pytest.raises(ValueError, match="targets"):
        compute_cams(light, images(2), targets=[0])
    with pytest.raises(ValueError, match="targets"):
        compute_cams(light, images(1), targets=[5])            # T1 has classes 0-4
    with pytest.raises(ValueError, match="float"):
        compute_cams(light, (images(1) * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_cams(light, images(1) * 255)


def test_task_output_is_one_heads_logits(light):
    x = images(2)
    np.testing.assert_allclose(TaskOutput(light, "T2")(x).detach(), light(x)["T2"].detach())


def test_works_under_no_grad_and_leaves_the_model_as_it_was(light):
    light.train()
    flags = [p.requires_grad for p in light.parameters()]
    with torch.no_grad():
        cams = compute_cams(light, images(2))
    assert_valid(cams, 2)
    assert light.training                                     # mode restored
    assert [p.requires_grad for p in light.parameters()] == flags
    assert all(p.grad is None for p in light.parameters())    # no weight gradients left behind
    assert not light.cam_layer._forward_hooks                 # hooks released
    light.eval()


def test_frozen_weights_still_give_cams(light):
    for p in light.parameters():
        p.requires_grad_(False)
    try:
        assert_valid(compute_cams(light, images(1)), 1)
    finally:
        for p in light.parameters():
            p.requires_grad_(True)


def test_too_small_images_raise_instead_of_returning_flat_maps():
    model = tiny_model("resnet18")
    with pytest.raises(CamError, match=r"constant.*map \(1, 1\)"):
        compute_cams(model, images(2, px=32))                 # 32 px -> a 1 x 1 map: nothing to localise
    with pytest.warns(UserWarning, match="constant"):
        flat = compute_cams(model, images(2, px=32), allow_constant=True)
    assert flat.shape == (2, 32, 32)


def test_check_cams_catches_bad_maps():
    good = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    assert check_cams(good, (2, 4, 4)) is good
    with pytest.raises(CamError, match="shape"):
        check_cams(good, (3, 4, 4))
    bad = good.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(CamError, match="NaN"):
        check_cams(bad, (2, 4, 4))


def test_errors_inside_the_extractor_are_not_swallowed(light):
    # the package's own `with cam:` prints and swallows IndexError; ours must not
    with pytest.raises(IndexError):
        with cam_extractor(light):
            raise IndexError("boom")
    assert not light.cam_layer._forward_hooks


def test_randomized_copy(light):
    x = images(2)
    before = {k: v.clone() for k, v in light.state_dict().items()}
    twin = randomized_copy(light, seed=1)
    for k, v in light.state_dict().items():                   # the original is untouched
        assert torch.equal(v, before[k])
    params = dict(light.named_parameters())
    for n, p in twin.named_parameters():
        if p.ndim >= 2:                                       # every conv / linear / LSTM / embedding weight re-drawn
            assert not torch.equal(p, params[n]), n
    bn = next(m for m in twin.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))   # statistics reset too
    again = randomized_copy(light, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), again.state_dict().values()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cams = compute_cams(twin, x, allow_constant=True)
    assert not np.allclose(cams, compute_cams(light, x), atol=1e-2)


def test_randomized_copy_can_stop_at_the_heads(light):
    twin = randomized_copy(light, seed=1, prefixes=["heads"])
    enc, enc_twin = dict(light.encoder.named_parameters()), dict(twin.encoder.named_parameters())
    assert all(torch.equal(enc[k], enc_twin[k]) for k in enc)
    assert not torch.equal(light.heads["T1"][-1].weight, twin.heads["T1"][-1].weight)


# ---------------------------------------------------------------- figure

def test_gradcam_figure_writes_png_and_pdf(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((48, 48, 3)).astype(np.float32)
    mask = np.zeros((96, 96), np.uint8)                       # another size than the image: resized
    mask[30:60, 40:70] = 1
    cam = rng.random((16, 16)).astype(np.float32)             # another size than the image: resized
    rows = [(img, mask, [(cam, "DR", True), (cam, "AMD", False)]),
            ((img * 255).astype(np.uint8), None, [(cam, "normal", True)])]   # fewer panels: blank cell
    fig = gradcam_figure(rows, tmp_path / "fig", column_titles=["annotation", "M3 p=15", "M3 p=70"],
                         row_titles=["dr 1", "normal 1"])
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    png, pdf = tmp_path / "fig.png", tmp_path / "fig.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:4] == b"%PDF"
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert any("DR" in s for s in labels) and any("AMD" in s for s in labels)
    with pytest.raises(ValueError, match="column_titles"):
        gradcam_figure(rows, tmp_path / "bad", column_titles=["annotation"])


def test_figure_rows_add_true_class_panels_in_black(tmp_path):
    img = np.zeros((8, 8, 3), np.float32)
    cams = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    rows = figure_rows([img, img], [None, None], {"M3 p=70": cams}, {"M3 p=70": ["normal", "dr"]}, ["dr", "dr"],
                       [0, 1], true_class_cams={"M3 p=70": cams[::-1]})
    first = rows[0].panels
    assert [p.correct for p in first] == [False, None] and first[1].caption == "true: dr"
    np.testing.assert_array_equal(first[1].cam, cams[1])
    fig = gradcam_figure(rows, tmp_path / "fig")
    labels = {ax.get_xlabel(): ax.xaxis.label.get_color() for ax in fig.axes if ax.get_xlabel()}
    assert labels == {"\u2717 normal": "#c0172b", "\u2713 dr": "#1a7f37", "true: dr": "black"}


def test_the_demo_preset_gives_at_least_a_4x4_map():
    from mtkd_utils import presets
    cfg = presets.config("demo")
    model = MTLModel(("T1",), n_coarse=5, n_fine=8, vocab_size=20, backbone=cfg.backbone,
                     output_stride=cfg.output_stride).eval()
    shapes = []
    hook = model.cam_layer.register_forward_hook(lambda module, inputs, output: shapes.append(output.shape[-2:]))
    with torch.no_grad():
        model(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    hook.remove()
    assert min(shapes[0]) >= 4, shapes
