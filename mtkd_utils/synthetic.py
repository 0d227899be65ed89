"""Embedded synthetic fundus dataset: colour fundus photographs with coarse and fine labels,
diagnosis sentences and lesion masks, generated deterministically from a seed.

Every image is planned first (anatomy, findings, nuisance: plain data in an "eye frame" whose
x axis points nasally and y superiorly, in units of the field-of-view radius) and then drawn.
The fine label decides which findings are planned; the sentence and the mask are made from
the planned findings, so all three agree with what is drawn.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import re
import secrets
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from .io import read_json, write_json
from .manifest import COLUMNS, LabelMap, write_manifest

GENERATOR_VERSION = 1  # bump when the images or labels change: old folders are then refused, not reused

COARSE = ["normal", "diabetic_retinopathy", "amd", "glaucoma", "melanoma"]
PATIENT_PRIOR = {"normal": 0.38, "diabetic_retinopathy": 0.27, "amd": 0.15, "glaucoma": 0.14, "melanoma": 0.06}
BILATERAL = {"diabetic_retinopathy": 0.85, "amd": 0.65, "glaucoma": 0.6, "melanoma": 0.03}  # P(both eyes diseased)
SAME_FINE_OTHER_EYE = 0.55  # a diseased fellow eye often has the same stage

# the generator's sizes live with their presets (mtkd_utils.presets): one table for config, grid and data
from .presets import SYNTHETIC_SIZES as SIZES  # noqa: E402


def _fine_classes() -> list[tuple[str, str, float]]:
    """(fine name, coarse parent, weight within the parent): long-tailed by construction."""
    out = [("normal", "normal", 0.60), ("normal_tessellated", "normal", 0.18),
           ("normal_myopic_crescent", "normal", 0.12), ("normal_choroidal_naevus", "normal", 0.10)]
    dr = {"mild_npdr": 0.30, "moderate_npdr": 0.22, "severe_npdr": 0.09, "pdr": 0.08}
    dme = {"mild_npdr": 0.05, "moderate_npdr": 0.10, "severe_npdr": 0.06, "pdr": 0.05}
    for grade in dr:
        out.append((f"dr_{grade}", "diabetic_retinopathy", dr[grade]))
        out.append((f"dr_{grade}_dme", "diabetic_retinopathy", dme[grade]))
    out.append(("dr_pdr_laser_treated", "diabetic_retinopathy", 0.05))
    out += [("amd_early", "amd", 0.30), ("amd_intermediate", "amd", 0.22), ("amd_intermediate_pigment", "amd", 0.14),
            ("amd_ga_extrafoveal", "amd", 0.06), ("amd_ga_foveal", "amd", 0.06), ("amd_neovascular", "amd", 0.10),
            ("amd_neovascular_haemorrhage", "amd", 0.07), ("amd_disciform_scar", "amd", 0.05)]
    for cdr, wc in (("06", 0.35), ("07", 0.30), ("08", 0.22), ("09", 0.13)):
        for extra, we in (("", 0.60), ("_notch", 0.25), ("_disc_haemorrhage", 0.15)):
            out.append((f"glaucoma_cdr{cdr}{extra}", "glaucoma", wc * we))
    for loc, wl in (("macular", 0.20), ("peripapillary", 0.15), ("superior", 0.35), ("inferior", 0.30)):
        for size, ws in (("small", 0.50), ("medium", 0.32), ("large", 0.18)):
            out.append((f"melanoma_{loc}_{size}", "melanoma", wl * ws))
    return out


FINE = _fine_classes()
FINE_PARENT = {name: parent for name, parent, _ in FINE}


def label_map() -> LabelMap:
    """The synthetic dataset's classes: 5 coarse, 45 fine nested in them."""
    return LabelMap.from_pairs(COARSE, [(name, parent) for name, parent, _ in FINE])


# --------------------------------------------------------------------------- plans (plain data)

@dataclass
class Spot:
    """One painted element in eye-frame units; `length` > 0 makes it a streak along `angle`."""

    kind: str
    x: float
    y: float
    r: float
    strength: float = 1.0  # opacity multiplier, 0..1
    length: float = 0.0
    angle: float = 0.0


@dataclass
class Lesion:
    """A drawn lesion in pixel coordinates (pixel centres at integers), as it went into the mask."""

    kind: str
    x: float
    y: float
    r: float


@dataclass
class Plan:
    """Everything needed to draw one eye; `findings` feeds the sentence."""

    fine: str
    eye: str
    disc: tuple[float, float]
    disc_r: float
    cdr: float
    notch: str = ""  # "", "inferior" or "superior"
    spots: list[Spot] = field(default_factory=list)
    findings: dict = field(default_factory=dict)
    tessellation: float = 0.0


@dataclass
class Rendered:
    """One generated photograph with its mask, drawn lesions and diagnosis sentence."""

    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8, 255 = lesion
    lesions: list[Lesion]
    text: str
    findings: dict


# Paint order (deep to surface) and style: colour (albedo), opacity, edge blur in pixels at 128 px.
# "disc" and "vessels" mark where the optic disc and the vessel tree are drawn. A None style
# means mask-only (the glaucomatous disc is drawn by the disc stage itself).
STYLE: dict[str, tuple[tuple[float, float, float], float, float] | None] = {
    "naevus": ((0.38, 0.34, 0.30), 0.55, 1.2),
    "subretinal_fluid": ((0.95, 0.62, 0.40), 0.35, 2.0),
    "melanoma": ((0.37, 0.35, 0.30), 0.92, 1.6),  # slate grey
    "melanoma_brown": ((0.40, 0.27, 0.16), 0.92, 1.6),
    "orange_pigment": ((0.90, 0.50, 0.15), 0.85, 0.5),
    "geographic_atrophy": ((0.93, 0.78, 0.60), 0.90, 0.6),
    "choroidal_vessel": ((0.85, 0.42, 0.22), 0.75, 0.6),
    "drusen": ((0.98, 0.88, 0.50), 0.80, 0.6),
    "pigment_clump": ((0.22, 0.14, 0.08), 0.80, 0.4),
    "cnv_membrane": ((0.50, 0.48, 0.36), 0.75, 1.5),
    "subretinal_haemorrhage": ((0.40, 0.06, 0.04), 0.90, 1.2),
    "disciform_scar": ((0.96, 0.92, 0.82), 0.90, 1.0),
    "myopic_crescent": ((0.97, 0.86, 0.70), 0.90, 0.5),
    "laser_scar": ((0.28, 0.18, 0.10), 0.85, 0.3),
    "laser_scar_centre": ((0.92, 0.82, 0.62), 0.80, 0.3),
    "peripapillary_atrophy": ((0.93, 0.80, 0.62), 0.70, 0.6),
    "disc": None,
    "glaucomatous_disc": None,
    "vessels": None,
    "macular_oedema": ((0.82, 0.62, 0.42), 0.30, 3.0),
    "microaneurysm": ((0.50, 0.05, 0.04), 0.95, 0.2),
    "haemorrhage": ((0.48, 0.06, 0.04), 0.92, 0.4),
    "hard_exudate": ((1.00, 0.90, 0.58), 0.95, 0.2),
    "cotton_wool_spot": ((0.97, 0.93, 0.85), 0.80, 1.3),
    "neovascularisation": ((0.62, 0.10, 0.08), 0.90, 0.2),
    "preretinal_haemorrhage": ((0.42, 0.03, 0.03), 0.95, 0.8),
    "disc_haemorrhage": ((0.50, 0.05, 0.04), 0.95, 0.3),
    "rim_notch": None,
}
NOT_LESIONS = {"naevus", "myopic_crescent"}  # normal variants: painted, not masked


# --------------------------------------------------------------------------- sampling helpers

def _in_fov(x: float, y: float, limit: float = 0.88) -> bool:
    """Inside the field of view, with a margin (eye-frame units)."""
    return x * x + y * y < limit * limit


def _sample_points(rng: np.random.Generator, n: int, plan: Plan, r_min: float, r_max: float,
                   centre: tuple[float, float] = (0.0, 0.0), avoid_fovea: float = 0.0) -> list[tuple[float, float]]:
    """n points in an annulus around `centre`, inside the field and off the optic disc."""
    pts: list[tuple[float, float]] = []
    dx, dy = plan.disc
    for _ in range(n * 50):
        if len(pts) == n:
            break
        a, d = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(r_min ** 2, r_max ** 2))
        x, y = centre[0] + d * math.cos(a), centre[1] + d * math.sin(a)
        if _in_fov(x, y) and math.hypot(x - dx, y - dy) > plan.disc_r * 1.4 and math.hypot(x, y) >= avoid_fovea:
            pts.append((x, y))
    return pts


def _spots(rng: np.random.Generator, kind: str, pts: list[tuple[float, float]], r: tuple[float, float],
           strength: tuple[float, float] = (0.7, 1.0)) -> list[Spot]:
    """One round spot of `kind` at each point, with random radius and opacity."""
    return [Spot(kind, x, y, rng.uniform(*r), rng.uniform(*strength)) for x, y in pts]


def _blob(rng: np.random.Generator, kind: str, x: float, y: float, r: float, parts: int = 4) -> list[Spot]:
    """An irregular patch: a central disc plus overlapping lobes."""
    out = [Spot(kind, x, y, r)]
    for _ in range(parts):
        a = rng.uniform(0, 2 * math.pi)
        d = r * rng.uniform(0.3, 0.6)
        out.append(Spot(kind, x + d * math.cos(a), y + d * math.sin(a), r * rng.uniform(0.45, 0.75)))
    return out


# --------------------------------------------------------------------------- planning per class

def _plan_normal(plan: Plan, rng: np.random.Generator) -> None:
    """Normal variants: tessellation, a myopic crescent or a benign naevus (none of them a lesion)."""
    if plan.fine == "normal_tessellated":
        plan.tessellation = rng.uniform(0.55, 0.9)
        plan.findings["tessellated"] = True
    elif plan.fine == "normal_myopic_crescent":
        dx, dy = plan.disc
        w = plan.disc_r * rng.uniform(0.35, 0.6)  # crescent width, temporal to the disc (towards the fovea)
        plan.spots.append(Spot("myopic_crescent", dx - w, dy, plan.disc_r * 1.02))
        plan.tessellation = rng.uniform(0.2, 0.5)
        plan.findings["crescent"] = True
    elif plan.fine == "normal_choroidal_naevus":
        (x, y), = _sample_points(rng, 1, plan, 0.25, 0.75)
        plan.spots.append(Spot("naevus", x, y, rng.uniform(0.035, 0.06), rng.uniform(0.7, 1.0)))
        plan.findings["naevus"] = True


DR_COUNTS = {  # (microaneurysms, haemorrhages, hard exudates, cotton-wool spots): (low, high) inclusive
    "mild_npdr": ((1, 7), (0, 1), (0, 0), (0, 0)),
    "moderate_npdr": ((3, 12), (3, 9), (0, 6), (0, 2)),
    "severe_npdr": ((6, 16), (12, 26), (2, 10), (2, 5)),
    "pdr": ((6, 16), (8, 22), (2, 10), (1, 4)),
    "pdr_laser_treated": ((2, 8), (2, 8), (0, 4), (0, 1)),
}


def _plan_dr(plan: Plan, rng: np.random.Generator) -> None:
    """Diabetic retinopathy: lesion counts by grade, plus oedema, new vessels or laser scars."""
    grade = plan.fine.removeprefix("dr_").removesuffix("_dme")
    dme = plan.fine.endswith("_dme")
    (ma, haem, exu, cws) = (int(rng.integers(lo, hi + 1)) for lo, hi in DR_COUNTS[grade])
    spots = plan.spots
    spots += _spots(rng, "microaneurysm", _sample_points(rng, ma, plan, 0.05, 0.55), (0.007, 0.012))
    big = grade in ("severe_npdr", "pdr")  # bigger haemorrhages, spread further out
    for x, y in _sample_points(rng, haem, plan, 0.08, 0.8 if big else 0.6):
        if rng.random() < 0.3:  # flame haemorrhage: a streak along the nerve fibres (roughly radial to the disc)
            a = math.atan2(y - plan.disc[1], x - plan.disc[0])
            spots.append(Spot("haemorrhage", x, y, rng.uniform(0.008, 0.013), rng.uniform(0.8, 1),
                              length=rng.uniform(0.03, 0.06), angle=a))
        else:
            spots.append(Spot("haemorrhage", x, y, rng.uniform(0.014, 0.03 if big else 0.022), rng.uniform(0.75, 1)))
    spots += _spots(rng, "hard_exudate", _sample_points(rng, exu, plan, 0.35, 0.75), (0.007, 0.014))
    spots += _spots(rng, "cotton_wool_spot", _sample_points(rng, cws, plan, 0.15, 0.6), (0.022, 0.035), (0.6, 0.9))
    plan.findings.update(grade=grade, microaneurysms=ma, haemorrhages=haem, exudates=exu, cotton_wool=cws)
    if dme:
        _plan_dme(plan, rng)
    if grade == "pdr":
        _plan_new_vessels(plan, rng)
    if grade == "pdr_laser_treated":
        pts = _sample_points(rng, int(rng.integers(35, 70)), plan, 0.55, 0.86)
        for s in _spots(rng, "laser_scar", pts, (0.018, 0.026)):
            spots += [s, Spot("laser_scar_centre", s.x, s.y, s.r * 0.55, s.strength)]
        plan.findings["laser"] = True


def _plan_dme(plan: Plan, rng: np.random.Generator) -> None:
    """Macular oedema: hard exudates ringed (circinate) or clustered near the fovea, with a faint sheen."""
    cx, cy = rng.normal(0, 0.08, 2)
    ring = rng.uniform(0.06, 0.14)
    n = int(rng.integers(8, 22))
    for _ in range(n):
        a = rng.uniform(0, 2 * math.pi)
        d = ring * rng.uniform(0.75, 1.2)
        plan.spots.append(Spot("hard_exudate", cx + d * math.cos(a), cy + d * math.sin(a),
                               rng.uniform(0.007, 0.016), rng.uniform(0.8, 1)))
    plan.spots.append(Spot("macular_oedema", cx, cy, ring * 1.1, rng.uniform(0.6, 1.0)))
    plan.findings["dme"] = True


def _plan_new_vessels(plan: Plan, rng: np.random.Generator) -> None:
    """Proliferative disease: tufts of fine tortuous new vessels at the disc and/or elsewhere."""
    where = rng.choice(["disc", "elsewhere", "both"], p=[0.45, 0.35, 0.2])
    sites = []
    if where in ("disc", "both"):
        sites.append(plan.disc)
    if where in ("elsewhere", "both"):
        sites += _sample_points(rng, 1, plan, 0.35, 0.7)
    for sx, sy in sites:
        x, y, a = sx, sy, rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(10, 18))):  # a random walk of short streaks: a loopy tuft
            a += rng.normal(0, 1.2)
            x2, y2 = x + 0.025 * math.cos(a), y + 0.025 * math.sin(a)
            if math.hypot(x2 - sx, y2 - sy) > 0.09:
                x2, y2 = sx + 0.5 * (x2 - sx), sy + 0.5 * (y2 - sy)
            plan.spots.append(Spot("neovascularisation", (x + x2) / 2, (y + y2) / 2, 0.004,
                                   length=0.03, angle=math.atan2(y2 - y, x2 - x)))
            x, y = x2, y2
    if rng.random() < 0.35:
        (x, y), = _sample_points(rng, 1, plan, 0.25, 0.6)
        plan.spots.append(Spot("preretinal_haemorrhage", x, y, rng.uniform(0.06, 0.1), 1.0))
        plan.findings["preretinal"] = True
    plan.findings["new_vessels"] = str(where)


def _plan_amd(plan: Plan, rng: np.random.Generator) -> None:
    """AMD by stage: drusen size and number, pigment, atrophy, neovascular membrane, haemorrhage, scar."""
    stage = plan.fine.removeprefix("amd_")
    sp = plan.spots
    small = int(rng.integers(3, 10)) if stage == "early" else int(rng.integers(2, 10))
    sp += _spots(rng, "drusen", _sample_points(rng, small, plan, 0.0, 0.28), (0.008, 0.014), (0.5, 0.9))
    if stage != "early":
        n = int(rng.integers(8, 22)) if stage.startswith("intermediate") else int(rng.integers(3, 10))
        for x, y in _sample_points(rng, n, plan, 0.0, 0.26):
            sp.append(Spot("drusen", x, y, rng.uniform(0.018, 0.032), rng.uniform(0.7, 1.0)))
    if stage == "intermediate_pigment" or (stage in ("ga_foveal", "ga_extrafoveal") and rng.random() < 0.5):
        sp += _spots(rng, "pigment_clump", _sample_points(rng, int(rng.integers(3, 9)), plan, 0.0, 0.22), (0.006, 0.013))
        plan.findings["pigment"] = True
    if stage.startswith("ga_"):
        foveal = stage == "ga_foveal"
        for _ in range(1 if foveal else int(rng.integers(1, 3))):
            d, a = (rng.uniform(0, 0.03) if foveal else rng.uniform(0.13, 0.25)), rng.uniform(0, 2 * math.pi)
            r = rng.uniform(0.07, 0.13) if foveal else rng.uniform(0.04, 0.07)
            sp += _blob(rng, "geographic_atrophy", d * math.cos(a), d * math.sin(a), r)
            if r > 0.06:  # large choroidal vessels show through the atrophic patch
                sp.append(Spot("choroidal_vessel", d * math.cos(a), d * math.sin(a), 0.008,
                               length=r * 1.2, angle=rng.uniform(0, math.pi)))
    if stage.startswith("neovascular"):
        cx, cy = rng.normal(0, 0.04, 2)
        sp.append(Spot("cnv_membrane", cx, cy, rng.uniform(0.05, 0.09), rng.uniform(0.7, 1.0)))
        pts = _sample_points(rng, int(rng.integers(2, 8)), plan, 0.07, 0.16, (cx, cy))
        sp += _spots(rng, "hard_exudate", pts, (0.006, 0.012))
        if stage == "neovascular_haemorrhage":
            a = rng.uniform(0, 2 * math.pi)
            r = rng.uniform(0.07, 0.14)
            sp += _blob(rng, "subretinal_haemorrhage", cx + 0.6 * r * math.cos(a), cy + 0.6 * r * math.sin(a), r, parts=3)
    if stage == "disciform_scar":
        cx, cy = rng.normal(0, 0.04, 2)
        sp += _blob(rng, "disciform_scar", cx, cy, rng.uniform(0.09, 0.15))
        pts = _sample_points(rng, int(rng.integers(3, 8)), plan, 0.0, 0.12, (cx, cy))
        sp += _spots(rng, "pigment_clump", pts, (0.008, 0.018))
    plan.findings.update(stage=stage, drusen=len([s for s in sp if s.kind == "drusen"]))


def _plan_glaucoma(plan: Plan, rng: np.random.Generator) -> None:
    """Glaucoma: the cup-to-disc ratio of the grade, an optional rim notch or disc haemorrhage."""
    rest = plan.fine.removeprefix("glaucoma_cdr")
    grade, extra = rest[:2], rest[2:]
    plan.cdr = int(grade) / 10 + rng.uniform(-0.025, 0.035)
    dx, dy = plan.disc
    plan.spots.append(Spot("glaucomatous_disc", dx, dy, plan.disc_r))
    side = "inferior" if rng.random() < 0.7 else "superior"  # the inferior rim goes first, usually
    sgn = -1 if side == "inferior" else 1
    if extra == "_notch":
        plan.notch = side
        plan.spots.append(Spot("rim_notch", dx, dy + sgn * plan.disc_r * 0.8, plan.disc_r * 0.3))
    if extra == "_disc_haemorrhage":
        a = math.radians(sgn * rng.uniform(100, 130))  # at the superotemporal / inferotemporal margin
        x, y = dx + plan.disc_r * 1.05 * math.cos(a), dy + plan.disc_r * 1.05 * math.sin(a)
        plan.spots.append(Spot("disc_haemorrhage", x, y, 0.011, 1.0, rng.uniform(0.05, 0.08), a))
    if plan.cdr > 0.75 and rng.random() < 0.4:
        plan.spots.insert(0, Spot("peripapillary_atrophy", dx - plan.disc_r * 0.25, dy, plan.disc_r * 1.2, 0.8))
        plan.findings["ppa"] = True
    plan.findings.update(cdr=int(grade) / 10, notch=side if extra == "_notch" else "",
                         disc_haemorrhage=side if extra == "_disc_haemorrhage" else "")


MELANOMA_R = {"small": (0.07, 0.095), "medium": (0.12, 0.16), "large": (0.2, 0.26)}


def _plan_melanoma(plan: Plan, rng: np.random.Generator) -> None:
    """Choroidal melanoma: a grey or brown mass of the class's size and place, with fluid or orange pigment."""
    _, loc, size = plan.fine.split("_")
    r = rng.uniform(*MELANOMA_R[size])
    dx, dy = plan.disc
    if loc == "macular":
        x, y = rng.normal(0, 0.05, 2)
    elif loc == "peripapillary":
        a = rng.uniform(0.5, 1.5) * math.pi  # temporal half of the disc, towards the macula
        x, y = dx + (plan.disc_r + 0.6 * r) * math.cos(a), dy + (plan.disc_r + 0.6 * r) * math.sin(a)
    else:
        y = (1 if loc == "superior" else -1) * rng.uniform(0.42, 0.82 - 0.5 * r)
        x = rng.uniform(-0.6, 0.45) * math.sqrt(max(0.0, 1 - y * y))
    sp = plan.spots
    fluid = rng.random() < (0.3 if size == "small" else 0.6)
    if fluid:
        sp.append(Spot("subretinal_fluid", x, y, r * 1.35, rng.uniform(0.6, 1.0)))
    colour = "brown" if rng.random() < 0.4 else "slate grey"
    sp += _blob(rng, "melanoma_brown" if colour == "brown" else "melanoma", x, y, r, parts=3)
    orange = rng.random() < 0.5
    if orange:
        pts = _sample_points(rng, int(rng.integers(3, 9)), plan, 0, r * 0.7, (x, y))
        sp += _spots(rng, "orange_pigment", pts, (0.008, 0.016))
    plan.findings.update(location=loc, size=size, colour=colour, fluid=fluid, orange=orange)


PLANNERS = {"normal": _plan_normal, "diabetic_retinopathy": _plan_dr, "amd": _plan_amd,
            "glaucoma": _plan_glaucoma, "melanoma": _plan_melanoma}


def plan_eye(fine: str, eye: str, rng: np.random.Generator) -> Plan:
    """Decide the anatomy and the findings of one eye from its fine label."""
    if fine not in FINE_PARENT:
        raise ValueError(f"unknown fine class {fine!r}; known: {sorted(FINE_PARENT)}")
    disc = (rng.uniform(0.6, 0.68), rng.uniform(-0.02, 0.08))
    plan = Plan(fine, eye, disc, disc_r=rng.uniform(0.135, 0.16), cdr=rng.uniform(0.15, 0.5),
                tessellation=rng.uniform(0.0, 0.25))
    PLANNERS[FINE_PARENT[fine]](plan, rng)
    return plan


# --------------------------------------------------------------------------- drawing

@dataclass
class Geometry:
    """Maps eye-frame coordinates to pixels: mirror (left eyes: disc on the left), rotate, shift."""

    size: int
    cx: float
    cy: float
    R: float  # field-of-view radius in pixels
    theta: float
    sign: int  # +1 right eye (nasal = image right), -1 left eye

    def px(self, x: float, y: float) -> tuple[float, float]:
        x = self.sign * x
        c, s = math.cos(self.theta), math.sin(self.theta)
        return self.cx + self.R * (c * x - s * y), self.cy - self.R * (s * x + c * y)

    def angle(self, a: float) -> float:
        """An eye-frame direction as an image angle (radians, y down)."""
        a = a if self.sign > 0 else math.pi - a
        return -(a + self.theta)


def _geometry(rng: np.random.Generator, size: int, eye: str) -> Geometry:
    """Camera framing: field-of-view size and decentring, rotation, and the mirror of a left eye."""
    shift = rng.uniform(-0.035, 0.035, 2) * size  # small field-of-view decentring
    return Geometry(size, (size - 1) / 2 + shift[0], (size - 1) / 2 + shift[1], size * rng.uniform(0.44, 0.49),
                    math.radians(rng.uniform(-15, 15)), 1 if eye == "right" else -1)


def _grow_vessel(rng: np.random.Generator, x: float, y: float, a: float, w: float, curl: float,
                 depth: int, branches: list[list[tuple[float, float, float]]]) -> None:
    """A vessel as a curving random walk that tapers and forks recursively; appends (x, y, width) polylines."""
    step = 0.03
    n = max(1, int(math.log(0.005 / w) / math.log(0.986)) + 1)  # steps until it has tapered away
    # random numbers drawn in bulk: most branches are short, and per-step generator calls dominate otherwise
    wiggle = rng.normal(0, 0.1, n).tolist()
    forks = (rng.random(n) < (0.09 if depth == 0 else 0.06)).tolist() if depth < 3 else [False] * n
    points = [(x, y, w)]
    branches.append(points)
    children = []
    for i in range(n):
        if w <= 0.005 or x * x + y * y > 1.02 ** 2:  # tapered away or left the field
            break
        a += curl * step + wiggle[i]
        curl *= 0.975  # the arcades open up as they leave the disc
        x, y, w = x + step * math.cos(a), y + step * math.sin(a), w * 0.986
        if x * x + y * y < 0.07 ** 2:  # foveal avascular zone
            break
        points.append((x, y, w))
        if forks[i]:
            children.append((x, y, a, w))
            w *= 0.9
    for cx, cy, ca, cw in children:
        side = 1 if rng.random() < 0.5 else -1
        _grow_vessel(rng, cx, cy, ca + side * rng.uniform(0.45, 1.0), cw * rng.uniform(0.5, 0.75),
                     rng.normal(0, 0.6), depth + 1, branches)


def _vessel_tree(rng: np.random.Generator, plan: Plan) -> dict[str, list]:
    """Arteries and veins leaving the disc: four temporal arcades round the macula, plus nasal branches."""
    dx, dy = plan.disc
    trees: dict[str, list] = {"artery": [], "vein": []}
    for kind, w in (("artery", 0.028), ("vein", 0.04)):
        for sgn in (1, -1):  # superior, inferior arcade
            a = sgn * math.radians(rng.uniform(95, 118))
            _grow_vessel(rng, dx + rng.normal(0, 0.01), dy + sgn * 0.01, a, w * rng.uniform(0.9, 1.1),
                         sgn * rng.uniform(1.6, 2.1), 0, trees[kind])
        for _ in range(int(rng.integers(1, 3))):
            a = rng.uniform(-1.1, 1.1)
            _grow_vessel(rng, dx, dy, a, w * rng.uniform(0.45, 0.65), rng.normal(0, 0.8), 1, trees[kind])
    return trees


class Canvas:
    """A float albedo image and a lesion mask; shapes are rasterised 2x oversampled by PIL."""

    SS = 2

    def __init__(self, geo: Geometry, albedo: np.ndarray):
        self.geo, self.albedo = geo, albedo
        self.mask = Image.new("L", (geo.size, geo.size))
        self.lesions: list[Lesion] = []

    def layer(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        im = Image.new("L", (self.geo.size * self.SS,) * 2)
        return im, ImageDraw.Draw(im)

    def to_layer(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eye-frame arrays to oversampled-layer pixel arrays (vectorised Geometry.px + _ss)."""
        g = self.geo
        x = g.sign * x
        c, s = math.cos(g.theta), math.sin(g.theta)
        px, py = g.cx + g.R * (c * x - s * y), g.cy - g.R * (s * x + c * y)
        return px * self.SS + (self.SS - 1) / 2, py * self.SS + (self.SS - 1) / 2

    def _ss(self, p: tuple[float, float]) -> tuple[float, float]:
        # pixel centre i of the output is at i*SS + (SS-1)/2 on the oversampled layer
        return p[0] * self.SS + (self.SS - 1) / 2, p[1] * self.SS + (self.SS - 1) / 2

    def composite(self, layer: Image.Image, colour, opacity: float, blur: float) -> None:
        """Blend `colour` into the albedo where the layer is painted (only inside its bounding box: cheap)."""
        box = layer.getbbox()
        if box is None:
            return
        S, m = self.geo.size, self.SS
        sigma = blur * S / 128
        pad = int(3 * sigma) + 2
        x0, y0 = max(0, box[0] // m - pad), max(0, box[1] // m - pad)
        x1, y1 = min(S, -(-box[2] // m) + pad), min(S, -(-box[3] // m) + pad)
        a = layer.crop((x0 * m, y0 * m, x1 * m, y1 * m)).resize((x1 - x0, y1 - y0), Image.BOX)
        a = np.asarray(a, dtype=np.float32) / 255 * opacity
        if sigma > 0:
            a = gaussian_filter(a, sigma)
        a = a[..., None]
        region = self.albedo[y0:y1, x0:x1]
        region *= 1 - a
        region += a * np.asarray(colour, dtype=np.float32)

    def draw_spot(self, draw: ImageDraw.ImageDraw, s: Spot) -> None:
        """Rasterise one spot (disc or streak) onto a layer, in pixels of the oversampled layer."""
        g = self.geo
        x, y = self._ss(g.px(s.x, s.y))
        r = s.r * g.R * self.SS
        fill = int(round(255 * s.strength))
        if s.length > 0:
            a, h = g.angle(s.angle), s.length * g.R * self.SS / 2
            ends = [(x - h * math.cos(a), y - h * math.sin(a)), (x + h * math.cos(a), y + h * math.sin(a))]
            draw.line(ends, fill=fill, width=max(1, round(2 * r)))
            for ex, ey in ends:
                draw.ellipse([ex - r, ey - r, ex + r, ey + r], fill=fill)
        else:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    def add_to_mask(self, s: Spot) -> None:
        """Record the spot as a lesion and cover it in the mask (at least 1.5 px, so tiny ones count)."""
        g = self.geo
        x, y = g.px(s.x, s.y)
        r = max(s.r * g.R, 1.5)
        draw = ImageDraw.Draw(self.mask)
        if s.length > 0:
            a, h = g.angle(s.angle), s.length * g.R / 2
            ends = [(x - h * math.cos(a), y - h * math.sin(a)), (x + h * math.cos(a), y + h * math.sin(a))]
            draw.line(ends, fill=255, width=max(3, round(2 * r)))
            for ex, ey in ends:
                draw.ellipse([ex - r, ey - r, ex + r, ey + r], fill=255)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        self.lesions.append(Lesion(s.kind, x, y, s.r * g.R))


def _background(rng: np.random.Generator, geo: Geometry, plan: Plan) -> np.ndarray:
    """Albedo of the fundus: orange-red with choroidal texture, a darker macula and a foveal reflex."""
    S = geo.size
    pig = rng.uniform(0, 1)  # fundus pigmentation: blond orange to dark brown-red
    base = np.array([0.93, 0.50, 0.22]) * (1 - pig) + np.array([0.66, 0.27, 0.12]) * pig
    albedo = np.broadcast_to(base.astype(np.float32), (S, S, 3)).copy()
    tex = _smooth_noise(rng, S, 6) * 0.06 + _smooth_noise(rng, S, 20) * 0.03
    albedo *= (1 + tex)[..., None]
    fx, fy = geo.px(0, 0)
    yy, xx = _grid(S)
    d2 = ((xx - fx) ** 2 + (yy - fy) ** 2) / geo.R ** 2
    macula = np.exp(-d2 / (2 * 0.14 ** 2)) * rng.uniform(0.25, 0.4)
    albedo *= (1 - macula[..., None] * np.array([0.55, 1.0, 0.9], dtype=np.float32))
    reflex = np.exp(-d2 / (2 * 0.012 ** 2)) * rng.uniform(0.1, 0.3)
    albedo += reflex[..., None] * np.array([1.0, 0.9, 0.7], dtype=np.float32)
    return albedo


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (y, x), float32; shared, so never modify them."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth random field: a coarse Gaussian grid upsampled bicubically."""
    grid = rng.normal(size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC))


def _tessellation(rng: np.random.Generator, canvas: Canvas, strength: float) -> None:
    """Visible large choroidal vessels: orange bands with darker pigment between them."""
    if strength < 0.05:
        return
    S = canvas.geo.size
    # ridged noise: the zero crossings of smooth random fields form a network of curvy bands
    bands = np.zeros((S, S), np.float32)
    for cells, width in ((8, 0.4), (13, 0.45)):
        n = _smooth_noise(rng, S, cells)
        bands = np.maximum(bands, np.exp(-(n / width) ** 2))
    dark = strength * 0.5 * (1 - bands)  # pigment between the vessels
    canvas.albedo *= (1 - dark[..., None] * np.array([0.45, 0.8, 0.7], dtype=np.float32))


def _draw_disc(canvas: Canvas, plan: Plan, rng: np.random.Generator) -> None:
    """Optic disc: a bright pink-orange rim and a pale yellow-white cup (bigger and notched in glaucoma)."""
    (dx, dy), r = plan.disc, plan.disc_r
    layer, draw = canvas.layer()
    canvas.draw_spot(draw, Spot("disc", dx, dy, r))
    halo, hdraw = canvas.layer()
    canvas.draw_spot(hdraw, Spot("disc", dx, dy, r * 1.5))
    canvas.composite(halo, (0.97, 0.62, 0.38), 0.3, 3.0)  # the glow round the disc
    canvas.composite(layer, (1.0, 0.70, 0.46), 0.95, 0.7)
    cup, cdraw = canvas.layer()
    cx = dx - r * 0.08  # the cup sits a little temporally: the temporal rim is the thinnest
    canvas.draw_spot(cdraw, Spot("cup", cx, dy, r * plan.cdr))
    if plan.notch:
        sgn = -1 if plan.notch == "inferior" else 1
        canvas.draw_spot(cdraw, Spot("cup", cx, dy + sgn * r * (1 - plan.cdr) * 0.9, r * plan.cdr * 0.75))
    canvas.composite(cup, (1.0, 0.96, 0.86), rng.uniform(0.85, 1.0), 0.5)


def _draw_vessels(canvas: Canvas, plan: Plan, rng: np.random.Generator) -> None:
    """Veins darker and thicker, arteries lighter and thinner."""
    trees = _vessel_tree(rng, plan)
    for kind, colour, opacity in (("vein", (0.42, 0.07, 0.06), 0.9), ("artery", (0.68, 0.16, 0.09), 0.8)):
        pts = np.array([p for branch in trees[kind] for p in branch])  # (N, 3): x, y, width in eye-frame units
        x, y = canvas.to_layer(pts[:, 0], pts[:, 1])
        wpx = pts[:, 2] * canvas.geo.R * Canvas.SS
        width = np.maximum(1, np.round(wpx)).astype(int)
        fill = (255 * np.minimum(1.0, wpx)).astype(int) // 32 * 32 + 31  # sub-pixel capillaries: fainter, not thinner
        first = np.zeros(len(pts), bool)
        first[np.cumsum([0] + [len(b) for b in trees[kind]])[:-1]] = True
        # one polyline per run of equal width and shade within a branch: far fewer calls than one per step
        cuts = np.flatnonzero(first | np.r_[True, (width[1:] != width[:-1]) | (fill[1:] != fill[:-1])]).tolist()
        xy = list(zip(x.tolist(), y.tolist()))
        layer, draw = canvas.layer()
        for i0, i1 in zip(cuts, cuts[1:] + [len(pts)]):
            j0 = i0 if first[i0] else i0 - 1  # start at the previous run's last point: no gaps
            if i1 - j0 > 1:
                draw.line(xy[j0:i1], fill=int(fill[i0]), width=int(width[i0]), joint="curve")
        canvas.composite(layer, colour, opacity, 0.3)


def _nuisance(rng: np.random.Generator, geo: Geometry, img: np.ndarray) -> np.ndarray:
    """Camera and capture: uneven illumination, vignetting, colour cast, gamma, blur, noise, circular field."""
    S = geo.size
    yy, xx = _grid(S)
    d2 = ((xx - geo.cx) ** 2 + (yy - geo.cy) ** 2) / geo.R ** 2
    d = np.sqrt(d2)
    a = rng.uniform(0, 2 * math.pi)
    gradient = ((xx - geo.cx) * math.cos(a) + (yy - geo.cy) * math.sin(a)) / geo.R
    illum = rng.uniform(0.7, 1.15) * (1 - rng.uniform(0.25, 0.6) * d2 * np.sqrt(d) + rng.uniform(0, 0.15) * gradient)
    img = img * np.clip(illum, 0.05, None)[..., None]
    img *= np.exp(rng.normal(0, 0.07, 3)).astype(np.float32)  # colour cast
    lut = (255 * np.linspace(0, 1, 256) ** rng.uniform(0.85, 1.15) + 0.5).astype(np.uint8)  # camera gamma
    if rng.random() < 0.6:
        img = gaussian_filter(img, (rng.uniform(0.2, 1.0) * S / 128,) * 2 + (0,))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.005, 0.03)
    fov = np.clip((1 - d) * geo.R / 1.2, 0, 1)  # soft edge of the circular field stop
    if rng.random() < 0.3:  # some cameras also crop the circle top and bottom
        fov *= np.clip((0.93 * geo.R - np.abs(yy - geo.cy)) / 1.2, 0, 1)
    img = np.clip(img * fov[..., None], 0, 1)
    return lut[(img * 255 + 0.5).astype(np.uint8)]


def render_eye(fine: str, eye: str, size: int, rng: np.random.Generator) -> Rendered:
    """Plan and draw one fundus photograph; returns the image, its lesion mask, the lesions and a sentence."""
    plan = plan_eye(fine, eye, rng)
    geo = _geometry(rng, size, eye)
    canvas = Canvas(geo, _background(rng, geo, plan))
    _tessellation(rng, canvas, plan.tessellation)
    assert {s.kind for s in plan.spots} <= set(STYLE), "every planned kind needs a STYLE entry (its paint order)"
    for kind in STYLE:
        if kind == "disc":
            _draw_disc(canvas, plan, rng)
        elif kind == "vessels":
            _draw_vessels(canvas, plan, rng)
        spots = [s for s in plan.spots if s.kind == kind]
        if not spots:
            continue
        if STYLE.get(kind) is not None:
            layer, draw = canvas.layer()
            for s in spots:
                canvas.draw_spot(draw, s)
            colour, opacity, blur = STYLE[kind]
            canvas.composite(layer, colour, opacity, blur)
        for s in spots:
            if kind not in NOT_LESIONS:
                canvas.add_to_mask(s)
    img = _nuisance(rng, geo, canvas.albedo)
    return Rendered(img, np.asarray(canvas.mask).copy(), canvas.lesions,
                    describe(plan, rng), plan.findings)


# --------------------------------------------------------------------------- diagnosis sentences

def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    """One of the synonyms."""
    return options[int(rng.integers(len(options)))]


def _few(rng: np.random.Generator, n: int, noun: str) -> str:
    """A count in words: 'a few microaneurysms', 'numerous haemorrhages'."""
    if n <= 3:
        return f"{_pick(rng, ['a few', 'occasional', 'isolated'])} {noun}"
    if n <= 10:
        return f"{_pick(rng, ['several', 'scattered', 'some'])} {noun}"
    return f"{_pick(rng, ['multiple', 'scattered', 'numerous', 'many'])} {noun}"


def _text_normal(f: dict, rng: np.random.Generator) -> tuple[str, list[str], list[str]]:
    """(diagnosis phrase, findings that must be named, findings that may be named) for a normal eye."""
    dx = _pick(rng, ["normal fundus", "no retinopathy", "unremarkable fundus", "healthy disc and macula",
                     "no abnormality detected"])
    must = []
    if f.get("tessellated"):
        must.append(_pick(rng, ["tessellated fundus", "prominent choroidal vessels", "tigroid fundus"]))
    if f.get("crescent"):
        must.append(_pick(rng, ["myopic crescent at the disc", "temporal myopic crescent", "tilted disc with myopic crescent"]))
    if f.get("naevus"):
        must.append(_pick(rng, ["small flat choroidal naevus", "benign choroidal naevus", "flat pigmented naevus"]))
    return dx, must, []


def _text_dr(f: dict, rng: np.random.Generator) -> tuple[str, list[str], list[str]]:
    """Grade as the diagnosis; oedema, new vessels and laser always named (they set the fine class)."""
    grade = f["grade"]
    npdr = _pick(rng, ["non proliferative diabetic retinopathy", "npdr", "non proliferative retinopathy"])
    pdr = _pick(rng, ["proliferative diabetic retinopathy", "pdr", "proliferative retinopathy"])
    dx = {"mild_npdr": f"{_pick(rng, ['mild', 'early'])} {npdr}", "moderate_npdr": f"moderate {npdr}",
          "severe_npdr": f"severe {npdr}", "pdr": pdr,
          "pdr_laser_treated": _pick(rng, [f"treated {pdr}", f"{pdr} after laser", f"lasered {pdr}"])}[grade]
    must, extra = [], []
    if f.get("dme"):
        must.append(_pick(rng, ["macular oedema", "diabetic macular oedema", "circinate exudates at the macula",
                                "clinically significant macular oedema"]))
    if f.get("new_vessels"):
        must.append({"disc": _pick(rng, ["new vessels at the disc", "neovascularisation of the disc"]),
                     "elsewhere": _pick(rng, ["new vessels elsewhere", "neovascularisation along the arcade"]),
                     "both": _pick(rng, ["new vessels at the disc and elsewhere", "disc and peripheral neovascularisation"]),
                     }[f["new_vessels"]])
    if f.get("laser"):
        must.append(_pick(rng, ["panretinal laser scars", "scattered laser scars", "old photocoagulation scars"]))
    if f.get("preretinal"):
        extra.append(_pick(rng, ["preretinal haemorrhage", "a boat shaped haemorrhage"]))
    if f["microaneurysms"]:
        extra.append(_few(rng, f["microaneurysms"], "microaneurysms"))
    if f["haemorrhages"]:
        noun = _pick(rng, ["dot blot haemorrhages", "retinal haemorrhages", "blot haemorrhages"])
        extra.append(_few(rng, f["haemorrhages"], noun))
    if f["exudates"]:
        extra.append(_pick(rng, ["hard exudates", "scattered exudates", "lipid exudates"]))
    if f["cotton_wool"]:
        extra.append(_pick(rng, ["cotton wool spots", "soft exudates"]))
    return dx, must, extra


def _text_amd(f: dict, rng: np.random.Generator) -> tuple[str, list[str], list[str]]:
    """Stage as the diagnosis; drusen size, pigment and haemorrhage named where they set the fine class."""
    stage = f["stage"]
    amd = _pick(rng, ["amd", "age related macular degeneration", "macular degeneration"])
    dx = {"early": f"early {amd}", "intermediate": f"intermediate {amd}", "intermediate_pigment": f"intermediate {amd}",
          "ga_extrafoveal": _pick(rng, ["geographic atrophy sparing the fovea", "extrafoveal geographic atrophy"]),
          "ga_foveal": _pick(rng, ["geographic atrophy involving the fovea", "central geographic atrophy"]),
          "neovascular": _pick(rng, ["neovascular amd", "wet amd", "choroidal neovascular membrane"]),
          "neovascular_haemorrhage": _pick(rng, ["neovascular amd", "wet amd", "active choroidal neovascularisation"]),
          "disciform_scar": _pick(rng, ["disciform scar at the macula", "disciform scar from wet amd"])}[stage]
    must, extra = [], []
    if stage == "early":
        must.append(_pick(rng, ["small drusen", "a few small drusen", "small hard drusen"]))
    elif stage.startswith("intermediate"):
        must.append(_pick(rng, ["large soft drusen", "confluent drusen", "large drusen at the macula"]))
    if stage == "intermediate_pigment":
        must.append(_pick(rng, ["pigment clumping", "pigmentary changes", "hyperpigmentation"]))
    elif f.get("pigment"):
        extra.append(_pick(rng, ["pigment clumping", "pigmentary changes"]))
    if stage == "neovascular_haemorrhage":
        must.append(_pick(rng, ["subretinal haemorrhage", "macular haemorrhage"]))
    if stage.startswith("neovascular"):
        extra.append(_pick(rng, ["grey membrane under the fovea", "exudates at the macula"]))
    if stage.startswith("ga_") or stage.startswith("neovascular") or stage == "disciform_scar":
        extra.append(_pick(rng, ["drusen", "soft drusen"]))
    return dx, must, extra


def _text_glaucoma(f: dict, rng: np.random.Generator) -> tuple[str, list[str], list[str]]:
    """The cup-to-disc ratio, a notch and a disc haemorrhage are always named."""
    cdr = f["cdr"]
    dx = _pick(rng, ["glaucoma suspect", "suspected glaucoma"]) if cdr < 0.65 else (
        _pick(rng, ["glaucomatous optic neuropathy", "glaucoma", "glaucomatous cupping"]) if cdr < 0.85 else
        _pick(rng, ["advanced glaucoma", "advanced glaucomatous cupping"]))
    must = [_pick(rng, [f"cup disc ratio {cdr:.1f}", f"cup to disc ratio of {cdr:.1f}",
                        f"vertical cup disc ratio {cdr:.1f}"])]
    if f["notch"]:
        side = f["notch"]
        must.append(_pick(rng, [f"{side} rim notch", f"notching of the {side} rim", f"{side} rim thinning"]))
    if f["disc_haemorrhage"]:
        must.append(_pick(rng, [f"{f['disc_haemorrhage']} disc haemorrhage", "splinter haemorrhage at the disc margin",
                                "disc haemorrhage"]))
    extra = [_pick(rng, ["peripapillary atrophy", "parapapillary atrophy"])] if f.get("ppa") else []
    return dx, must, extra


def _text_melanoma(f: dict, rng: np.random.Generator) -> tuple[str, list[str], list[str]]:
    """Size and place in the diagnosis phrase; colour, fluid and orange pigment as findings."""
    size = {"small": "small", "medium": _pick(rng, ["medium", "medium sized"]), "large": "large"}[f["size"]]
    mass = _pick(rng, ["choroidal melanoma", "pigmented choroidal mass", "choroidal mass suspicious of melanoma",
                       "melanoma of the choroid"])
    where = {"macular": _pick(rng, ["at the macula", "involving the macula", "under the fovea"]),
             "peripapillary": _pick(rng, ["adjacent to the disc", "next to the optic disc", "at the disc margin"]),
             "superior": _pick(rng, ["in the superior fundus", "superiorly", "above the superior arcade"]),
             "inferior": _pick(rng, ["in the inferior fundus", "inferiorly", "below the inferior arcade"])}[f["location"]]
    dx = f"{size} {mass} {where}"
    extra = [_pick(rng, [f"{f['colour']} pigmentation", f"{f['colour']} surface"]), "dome shaped elevation"]
    if f["orange"]:
        extra.append(_pick(rng, ["orange pigment", "overlying orange pigment"]))
    if f["fluid"]:
        extra.append(_pick(rng, ["subretinal fluid", "surrounding subretinal fluid"]))
    return dx, [], extra


TEXT = {"normal": _text_normal, "diabetic_retinopathy": _text_dr, "amd": _text_amd,
        "glaucoma": _text_glaucoma, "melanoma": _text_melanoma}
TEMPLATES = ["{eye} eye: {dx} with {details}.", "{dx} in the {eye} eye with {details}.",
             "{details} in the {eye} eye, consistent with {dx}.", "{eye} eye shows {details}, in keeping with {dx}.",
             "{eye} fundus: {details}. impression {dx}."]
TEMPLATES_PLAIN = ["{eye} eye: {dx}.", "{dx} in the {eye} eye.", "{eye} fundus: {dx}.", "{eye} eye, {dx}."]
TEMPLATES_NORMAL = ["{eye} eye: {details}, otherwise normal.", "{details} in the {eye} eye, otherwise unremarkable.",
                    "{eye} eye shows {details}, no other abnormality.", "{eye} eye: {details}. no retinopathy."]
MAX_TOKENS = 25


def tokens(text: str) -> list[str]:
    """Words, numbers and punctuation marks, the way the sentence length limits count them."""
    return re.findall(r"\d+\.\d+|[a-z]+|[.,:]", text)


def describe(plan: Plan, rng: np.random.Generator) -> str:
    """A short lower-case diagnosis sentence from the planned findings, with varied wording and order."""
    dx, must, extra = TEXT[FINE_PARENT[plan.fine]](plan.findings, rng)
    extra = [extra[i] for i in rng.permutation(len(extra))][: int(rng.integers(0 if must else 1, 3))]
    details = must + extra
    details = [details[i] for i in rng.permutation(len(details))]
    eye = plan.eye
    while True:
        if details:
            templates = TEMPLATES_NORMAL if FINE_PARENT[plan.fine] == "normal" else TEMPLATES
            text = _pick(rng, templates).format(eye=eye, dx=dx, details=_join(details))
        else:
            text = _pick(rng, TEMPLATES_PLAIN).format(eye=eye, dx=dx)
        if len(tokens(text)) <= MAX_TOKENS or not details:
            return text
        droppable = [d for d in details if d not in must]
        details.remove(droppable[-1] if droppable else details[-1])


# --------------------------------------------------------------------------- patients and files

def _quota(n: int, prior: dict[str, float]) -> list[str]:
    """Exactly proportional class counts (largest remainder), every class at least once when n allows."""
    names, p = list(prior), np.array(list(prior.values()))
    raw = p / p.sum() * n
    counts = np.floor(raw).astype(int)
    if n >= len(names):
        counts = np.maximum(counts, 1)
    for i in np.argsort(-(raw - counts)):
        if counts.sum() >= n:
            break
        counts[i] += 1
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    return [name for name, c in zip(names, counts) for _ in range(c)]


def _sample_fine(rng: np.random.Generator, coarse: str) -> str:
    """A fine class of `coarse`, drawn by the long-tailed weights."""
    names = [f for f, c, _ in FINE if c == coarse]
    w = np.array([w for _, c, w in FINE if c == coarse])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _patient_fines(rng: np.random.Generator, coarse: str) -> dict[str, str]:
    """Fine labels of both eyes: disease often bilateral (DR, AMD), usually unilateral (melanoma)."""
    first = _sample_fine(rng, coarse)
    if coarse == "normal":
        other = first if rng.random() < 0.8 else _sample_fine(rng, "normal")
    elif rng.random() < BILATERAL[coarse]:
        other = first if rng.random() < SAME_FINE_OTHER_EYE else _sample_fine(rng, coarse)
    else:
        other = _sample_fine(rng, "normal")
    eyes = ["left", "right"] if rng.random() < 0.5 else ["right", "left"]
    return {eyes[0]: first, eyes[1]: other}


def _make_patient(job: tuple[str, int, int, bool, str, int]) -> list[dict]:
    """Draw and save both eyes of one patient (runs in a worker); returns its manifest rows."""
    root, seed, index, labeled, coarse, size = job
    pid = f"p{index:05d}"
    fines = _patient_fines(np.random.default_rng([seed, index, 0]), coarse)
    rows = []
    for k, eye in enumerate(("left", "right")):
        iid = f"{pid}_{eye[0].upper()}"
        r = render_eye(fines[eye], eye, size, np.random.default_rng([seed, index, 1 + k]))
        Image.fromarray(r.image).save(Path(root) / "images" / f"{iid}.png", compress_level=4)
        mask = ""
        if labeled and r.lesions:
            mask = f"masks/{iid}.png"
            Image.fromarray(r.mask).save(Path(root) / mask, compress_level=4)
        rows.append({"image_id": iid, "image": f"images/{iid}.png", "patient_id": pid, "eye": eye,
                     "labeled": int(labeled), "coarse": FINE_PARENT[fines[eye]] if labeled else "",
                     "fine": fines[eye] if labeled else "", "text": r.text if labeled else "", "mask": mask})
    return rows


def generate(out_dir: str | Path, *, n_patients: int, n_unlabeled_patients: int, image_size: int = 128,
             seed: int = 0) -> Path:
    """Write a complete synthetic dataset folder (manifest, label map, images, masks, params); returns out_dir."""
    out_dir = Path(out_dir)
    if _occupied(out_dir):
        raise FileExistsError(f"{out_dir} already exists and is not empty; delete it or choose another folder")
    if n_patients < 1 or n_unlabeled_patients < 0 or image_size < 32:
        raise ValueError("need n_patients >= 1, n_unlabeled_patients >= 0 and image_size >= 32")
    params = _params(n_patients, n_unlabeled_patients, image_size, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # a hidden unique sibling; plain mkdir (not mkdtemp, which makes it private to this user)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        # patient-level disease quota: exact imbalance, every class present; shuffled by the seed
        coarse = _quota(n_patients, PATIENT_PRIOR)
        coarse = [coarse[i] for i in np.random.default_rng([seed, 1]).permutation(len(coarse))]
        unl_rng = np.random.default_rng([seed, 2])
        coarse += [str(unl_rng.choice(COARSE, p=list(PATIENT_PRIOR.values()))) for _ in range(n_unlabeled_patients)]
        jobs = [(str(tmp), seed, i, i < n_patients, c, image_size) for i, c in enumerate(coarse)]
        rows = [row for rows in _map(_make_patient, jobs) for row in rows]
        write_manifest(pd.DataFrame(rows, columns=COLUMNS), tmp / "manifest.csv")
        label_map().save(tmp / "label_map.json")
        write_json(params, tmp / "params.json")  # written last: its presence marks a finished folder
        if out_dir.exists() and not _occupied(out_dir):
            out_dir.rmdir()  # an empty folder the caller made; the rename needs it gone
        try:
            os.rename(tmp, out_dir)  # atomic: a killed run leaves only the hidden .partial folder
        except OSError:
            if _occupied(out_dir):  # another process finished first
                raise FileExistsError(f"{out_dir} was written by someone else while this run generated it") from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


_GENERATE_SIGNATURE = inspect.signature(generate)


def _occupied(folder: Path) -> bool:
    """The folder exists and holds something."""
    return folder.exists() and any(folder.iterdir())


def _map(fn, jobs: list) -> list:
    """fn over jobs in order, on several processes when it pays; results never depend on the worker count."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(8, cpus)
    if workers < 2 or len(jobs) < 64:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, jobs, chunksize=16))


def _params(n_patients: int, n_unlabeled_patients: int, image_size: int, seed: int) -> dict:
    """What params.json records: a folder is reused only when all of it matches."""
    return {"n_patients": int(n_patients), "n_unlabeled_patients": int(n_unlabeled_patients),
            "image_size": int(image_size), "seed": int(seed), "generator_version": GENERATOR_VERSION}


def ensure_synthetic(out_dir: str | Path, **params) -> Path:
    """Return out_dir/manifest.csv, generating the dataset first unless out_dir already holds these params."""
    out_dir = Path(out_dir)
    allowed = [p for p in _GENERATE_SIGNATURE.parameters if p != "out_dir"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown synthetic dataset parameter(s) {unknown}; allowed: {allowed}")
    try:
        bound = _GENERATE_SIGNATURE.bind(out_dir, **params)
    except TypeError as e:
        raise ValueError(f"synthetic dataset parameters: {e}; e.g. ensure_synthetic(folder, **SIZES['demo'])") from None
    bound.apply_defaults()
    want = _params(**{k: v for k, v in bound.arguments.items() if k != "out_dir"})
    if not _occupied(out_dir):
        try:
            generate(out_dir, **{k: want[k] for k in allowed})
        except FileExistsError:
            pass  # a concurrent run got there first: check what it wrote, below
    have = read_json(out_dir / "params.json") if (out_dir / "params.json").is_file() else None
    if have != want:
        raise ValueError(f"{out_dir} holds something else (params {have}, wanted {want}); "
                         f"delete the folder or choose another one")
    return out_dir / "manifest.csv"
