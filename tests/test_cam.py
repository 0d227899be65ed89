"""CAMs on tiny random models for every backbone, localisation scores on hand-made maps, the figure files."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from mtkd_utils.cam import (METHODS, CamError, TaskOutput, cam_extractor, check_cams, compute_cams, energy_inside,
                            gradcam_figure, localisation_scores, localisation_table, pointing_game, predicted_classes,
                            randomized_copy, target_layer)
from mtkd_utils.model import SUPPORTED_BACKBONES, MTLModel
from pytorch_grad_cam.utils.image import scale_cam_image

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


# ---------------------------------------------------------------- localisation scores

def test_pointing_game_by_hand():
    cam = np.zeros((4, 4))
    cam[1, 2] = 1.0
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 2:4] = 255
    assert pointing_game(cam, mask) is True
    cam2 = np.zeros((4, 4))
    cam2[3, 0] = 0.7
    assert pointing_game(cam2, mask) is False


def test_pointing_game_resizes_the_mask_by_nearest_neighbour():
    cam = np.zeros((4, 4))
    cam[3, 3] = 1.0
    mask = np.zeros((8, 8), bool)
    mask[6:, 6:] = True                                       # the bottom-right 2 x 2 block at 4 x 4
    assert pointing_game(cam, mask) is True
    assert energy_inside(cam, mask) == pytest.approx(1.0)


def test_pointing_game_ties():
    cam = np.zeros((4, 4))
    cam[0, 0:3] = 1.0                                         # a plateau of three maxima, two inside
    mask = np.zeros((4, 4), bool)
    mask[0, 0:2] = True
    assert pointing_game(cam, mask, ties="majority") is True
    assert pointing_game(cam, mask, ties="all") is False
    assert pointing_game(cam, mask, ties="any") is True
    flat = np.full((4, 4), 0.3)                               # constant: all 16 tie, 2 inside -> no hit
    assert pointing_game(flat, mask) is False
    with pytest.raises(ValueError, match="ties"):
        pointing_game(cam, mask, ties="first")
    with pytest.raises(ValueError, match="empty"):
        pointing_game(cam, np.zeros((4, 4)))


def test_energy_inside_by_hand():
    cam = np.array([[1.0, 3.0], [0.0, 4.0]])
    mask = np.array([[0, 1], [0, 1]])
    assert energy_inside(cam, mask) == pytest.approx(7 / 8)
    assert energy_inside(np.zeros((2, 2)), mask) == pytest.approx(0.5)       # no evidence: uniform -> area share
    assert energy_inside(np.full((2, 2), 0.2), mask) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-negative"):
        energy_inside(-cam, mask)


def test_localisation_table_by_hand():
    a = np.zeros((2, 2)); a[0, 0] = 1.0                       # hits, energy 1
    b = np.array([[0.0, 1.0], [1.0, 2.0]])                    # max at (1,1) outside, energy 1/4 (mask (0,1))
    c = np.ones((2, 2))                                       # no mask: not scored
    d = np.zeros((2, 2))                                      # flat: energy = area share 2/4, no hit
    masks = [np.array([[1, 0], [0, 0]]), np.array([[0, 1], [0, 0]]), None, np.array([[1, 1], [0, 0]])]
    scores = localisation_scores([a, b, c, d], masks)
    assert scores["pointing"].tolist()[:2] == [1.0, 0.0] and np.isnan(scores["pointing"][2])
    assert scores["energy"].tolist()[:2] == pytest.approx([1.0, 0.25])
    table = localisation_table([a, b, c, d], masks, groups={"disease": ["dr", "dr", "normal", "amd"]})
    assert table.index.tolist() == ["amd", "dr", "normal", "all"]
    assert table.loc["dr", "pointing"] == pytest.approx(0.5)
    assert table.loc["dr", "energy"] == pytest.approx(0.625)
    assert table.loc["dr", "mask_share"] == pytest.approx(0.25)
    assert table.loc["normal", "n_scored"] == 0 and table.loc["normal", "n_images"] == 1
    assert table.loc["all", "n_scored"] == 3 and table.loc["all", "n_flat"] == 1
    assert table.loc["all", "pointing"] == pytest.approx(1 / 3)
    assert table.loc["all", "energy"] == pytest.approx((1 + 0.25 + 0.5) / 3)
    assert localisation_table([a], [masks[0]]).index.tolist() == ["all"]


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
