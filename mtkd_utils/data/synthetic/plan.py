"""What one eye shows, as plain data: anatomy and findings in an "eye frame" (x nasal, y superior,
units of the field-of-view radius), decided from the fine label before anything is drawn.

At the demo's working resolution (64 px after the field-of-view crop) one unit is 32 px, so the
smallest lesion that defines a class, radius MIN_R = 0.045, is 2.9 px across. The sentence and
the lesion mask are made from these findings, so both agree with what is drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .taxonomy import FINE_PARENT

MIN_R = 0.045  # eye-frame radius of the smallest masked lesion: 2.9 px across at 64 px


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
class Plan:
    """Everything needed to draw one eye; `findings` feeds the sentence."""

    fine: str
    eye: str
    disc: tuple[float, float]
    disc_r: float
    cdr: float
    spots: list[Spot] = field(default_factory=list)
    findings: dict = field(default_factory=dict)
    tessellation: float = 0.0


# ------------------------------------------------------------------ sampling helpers
def _in_fov(x: float, y: float, limit: float = 0.86) -> bool:
    """Inside the field of view, with a margin (eye-frame units)."""
    return x * x + y * y < limit * limit


def sample_points(rng: np.random.Generator, n: int, plan: Plan, r_min: float, r_max: float,
                  centre: tuple[float, float] = (0.0, 0.0)) -> list[tuple[float, float]]:
    """Up to n points in an annulus around `centre`, inside the field and off the optic disc."""
    pts: list[tuple[float, float]] = []
    dx, dy = plan.disc
    for _ in range(n * 50):
        if len(pts) == n:
            break
        a, d = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(r_min ** 2, r_max ** 2))
        x, y = centre[0] + d * math.cos(a), centre[1] + d * math.sin(a)
        if _in_fov(x, y) and math.hypot(x - dx, y - dy) > plan.disc_r * 1.5:
            pts.append((x, y))
    return pts


def spots_at(rng: np.random.Generator, kind: str, pts: list[tuple[float, float]], r: tuple[float, float],
             strength: tuple[float, float] = (0.8, 1.0)) -> list[Spot]:
    """One round spot of `kind` at each point, with random radius and opacity."""
    return [Spot(kind, x, y, rng.uniform(*r), rng.uniform(*strength)) for x, y in pts]


def blob(rng: np.random.Generator, kind: str, x: float, y: float, r: float, parts: int = 4) -> list[Spot]:
    """An irregular patch: a central disc plus overlapping lobes."""
    out = [Spot(kind, x, y, r)]
    for _ in range(parts):
        a = rng.uniform(0, 2 * math.pi)
        d = r * rng.uniform(0.3, 0.6)
        out.append(Spot(kind, x + d * math.cos(a), y + d * math.sin(a), r * rng.uniform(0.5, 0.75)))
    return out


def _count(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


# ------------------------------------------------------------------ normal variants
def _plan_normal(plan: Plan, rng: np.random.Generator) -> None:
    """Normal variants (not lesions): a tessellated fundus, or a myopic crescent >= 2.5 px wide."""
    if plan.fine == "normal_tessellated":
        plan.tessellation = rng.uniform(0.6, 0.9)
        plan.findings["tessellated"] = True
    elif plan.fine == "normal_myopic_crescent":
        dx, dy = plan.disc
        w = plan.disc_r * rng.uniform(0.5, 0.8)  # crescent width, temporal to the disc (towards the fovea)
        plan.spots.append(Spot("myopic_crescent", dx - w, dy, plan.disc_r * 1.02))
        plan.tessellation = rng.uniform(0.2, 0.5)
        plan.findings["crescent"] = True


# ------------------------------------------------------------------ diabetic retinopathy
# grade -> (haemorrhages, hard exudates, cotton-wool spots) as inclusive (low, high): the grades are
# told apart by how many visible haemorrhages there are, and by new vessels for PDR
DR_COUNTS = {
    "mild_npdr": ((2, 4), (0, 0), (0, 0)),
    "moderate_npdr": ((6, 10), (0, 4), (0, 0)),
    "severe_npdr": ((13, 20), (2, 6), (2, 4)),
    "pdr": ((6, 14), (0, 4), (0, 2)),
}


def _plan_dr(plan: Plan, rng: np.random.Generator) -> None:
    """Diabetic retinopathy: haemorrhage counts by grade, exudates and cotton-wool spots, new vessels in PDR."""
    grade = plan.fine.removeprefix("dr_")
    haem, exu, cws = (_count(rng, b) for b in DR_COUNTS[grade])
    pts = sample_points(rng, haem, plan, 0.1, 0.75)
    for x, y in pts:
        if rng.random() < 0.25:  # flame haemorrhage: a streak along the nerve fibres (roughly radial to the disc)
            a = math.atan2(y - plan.disc[1], x - plan.disc[0])
            plan.spots.append(Spot("haemorrhage", x, y, rng.uniform(0.035, 0.045), rng.uniform(0.85, 1),
                                   length=rng.uniform(0.06, 0.1), angle=a))
        else:
            plan.spots.append(Spot("haemorrhage", x, y, rng.uniform(MIN_R, 0.07), rng.uniform(0.85, 1)))
    plan.spots += spots_at(rng, "hard_exudate", sample_points(rng, exu, plan, 0.25, 0.7), (MIN_R, 0.055))
    plan.spots += spots_at(rng, "cotton_wool_spot", sample_points(rng, cws, plan, 0.15, 0.6), (0.05, 0.07), (0.7, 0.9))
    plan.findings.update(grade=grade, haemorrhages=len(pts), exudates=exu, cotton_wool=cws)
    if grade == "pdr":
        _plan_new_vessels(plan, rng)


def _plan_new_vessels(plan: Plan, rng: np.random.Generator) -> None:
    """Proliferative disease: a frond of tortuous new vessels (>= 6 px across) at the disc or elsewhere."""
    at_disc = rng.random() < 0.55
    (sx, sy), = [plan.disc] if at_disc else sample_points(rng, 1, plan, 0.35, 0.65)
    reach = rng.uniform(0.08, 0.1)
    plan.spots.append(Spot("new_vessel_frond", sx, sy, reach + 0.03))  # the mask's outline of the tuft
    x, y, a = sx, sy, rng.uniform(0, 2 * math.pi)
    for _ in range(int(rng.integers(22, 32))):  # a random walk of short streaks: a loopy tuft
        a += rng.normal(0, 1.2)
        x2, y2 = x + 0.03 * math.cos(a), y + 0.03 * math.sin(a)
        if math.hypot(x2 - sx, y2 - sy) > reach:
            x2, y2 = sx + 0.5 * (x2 - sx), sy + 0.5 * (y2 - sy)
        plan.spots.append(Spot("neovascularisation", (x + x2) / 2, (y + y2) / 2, 0.012,
                               length=0.03, angle=math.atan2(y2 - y, x2 - x)))
        x, y = x2, y2
    if rng.random() < 0.35:
        (x, y), = sample_points(rng, 1, plan, 0.25, 0.6)
        plan.spots.append(Spot("preretinal_haemorrhage", x, y, rng.uniform(0.08, 0.11), 1.0))
        plan.findings["preretinal"] = True
    plan.findings["new_vessels"] = "disc" if at_disc else "elsewhere"


# ------------------------------------------------------------------ age-related macular degeneration
def _plan_amd(plan: Plan, rng: np.random.Generator) -> None:
    """AMD by stage: many large drusen, a patch of geographic atrophy, or a membrane with haemorrhage."""
    stage = plan.fine.removeprefix("amd_")
    n_drusen = int(rng.integers(7, 15)) if stage == "intermediate" else int(rng.integers(2, 6))
    plan.spots += spots_at(rng, "drusen", sample_points(rng, n_drusen, plan, 0.0, 0.3), (MIN_R, 0.065), (0.75, 1.0))
    if stage == "geographic_atrophy":
        d, a = rng.uniform(0, 0.08), rng.uniform(0, 2 * math.pi)
        r = rng.uniform(0.1, 0.15)
        x, y = d * math.cos(a), d * math.sin(a)
        plan.spots += blob(rng, "geographic_atrophy", x, y, r)
        plan.spots.append(Spot("choroidal_vessel", x, y, 0.015, length=r * 1.3, angle=rng.uniform(0, math.pi)))
        if rng.random() < 0.5:
            pts = sample_points(rng, int(rng.integers(2, 5)), plan, 0.0, r * 1.2, (x, y))
            plan.spots += spots_at(rng, "pigment_clump", pts, (MIN_R, 0.05))
            plan.findings["pigment"] = True
    if stage == "neovascular":
        cx, cy = rng.normal(0, 0.04, 2)
        plan.spots.append(Spot("cnv_membrane", cx, cy, rng.uniform(0.07, 0.1), rng.uniform(0.8, 1.0)))
        if rng.random() < 0.7:
            a, r = rng.uniform(0, 2 * math.pi), rng.uniform(0.07, 0.12)
            plan.spots += blob(rng, "subretinal_haemorrhage", cx + 0.6 * r * math.cos(a), cy + 0.6 * r * math.sin(a),
                               r, parts=3)
            plan.findings["haemorrhage"] = True
        pts = sample_points(rng, int(rng.integers(2, 6)), plan, 0.1, 0.2, (cx, cy))
        plan.spots += spots_at(rng, "hard_exudate", pts, (MIN_R, 0.05))
    plan.findings.update(stage=stage, drusen=n_drusen)


# ------------------------------------------------------------------ glaucoma
CDR = {"normal": (0.12, 0.32), "06": (0.57, 0.63), "09": (0.85, 0.91)}  # ~3 px of cup diameter between neighbours


def _plan_glaucoma(plan: Plan, rng: np.random.Generator) -> None:
    """Glaucoma: the cup-to-disc ratio of the grade (disc size is the fixed reference), sometimes atrophy."""
    grade = plan.fine.removeprefix("glaucoma_cdr")
    plan.cdr = rng.uniform(*CDR[grade])
    dx, dy = plan.disc
    plan.spots.append(Spot("glaucomatous_disc", dx, dy, plan.disc_r))
    if grade == "09" and rng.random() < 0.4:
        plan.spots.insert(0, Spot("peripapillary_atrophy", dx - plan.disc_r * 0.25, dy, plan.disc_r * 1.2, 0.8))
        plan.findings["ppa"] = True
    plan.findings["cdr"] = int(grade) / 10


# ------------------------------------------------------------------ choroidal melanoma
MELANOMA_R = {"small": (0.08, 0.11), "large": (0.19, 0.25)}
MELANOMA_PLACES = ("macular", "peripapillary", "superior", "inferior")


def _plan_melanoma(plan: Plan, rng: np.random.Generator) -> None:
    """Choroidal melanoma: a grey or brown mass of the class's size, anywhere, with fluid or orange pigment."""
    size = plan.fine.removeprefix("melanoma_")
    loc = MELANOMA_PLACES[int(rng.integers(len(MELANOMA_PLACES)))]
    r = rng.uniform(*MELANOMA_R[size])
    dx, dy = plan.disc
    if loc == "macular":
        x, y = rng.normal(0, 0.05, 2)
    elif loc == "peripapillary":
        a = rng.uniform(0.5, 1.5) * math.pi  # temporal half of the disc, towards the macula
        x, y = dx + (plan.disc_r + 0.6 * r) * math.cos(a), dy + (plan.disc_r + 0.6 * r) * math.sin(a)
    else:
        y = (1 if loc == "superior" else -1) * rng.uniform(0.4, 0.8 - 0.6 * r)
        x = rng.uniform(-0.6, 0.45) * math.sqrt(max(0.0, 1 - y * y))
    fluid = rng.random() < (0.3 if size == "small" else 0.6)
    if fluid:
        plan.spots.append(Spot("subretinal_fluid", x, y, r * 1.35, rng.uniform(0.6, 1.0)))
    colour = "brown" if rng.random() < 0.4 else "slate grey"
    plan.spots += blob(rng, "melanoma_brown" if colour == "brown" else "melanoma", x, y, r, parts=3)
    orange = rng.random() < 0.5
    if orange:
        pts = sample_points(rng, int(rng.integers(2, 5)), plan, r * 0.4, r * 0.8, (x, y))  # lipofuscin clumps
        plan.spots += spots_at(rng, "orange_pigment", pts, (MIN_R, 0.05))
    plan.findings.update(location=loc, size=size, colour=colour, fluid=fluid, orange=orange)


PLANNERS = {"normal": _plan_normal, "diabetic_retinopathy": _plan_dr, "amd": _plan_amd,
            "glaucoma": _plan_glaucoma, "melanoma": _plan_melanoma}


def plan_eye(fine: str, eye: str, rng: np.random.Generator) -> Plan:
    """Decide the anatomy and the findings of one eye from its fine label."""
    if fine not in FINE_PARENT:
        raise ValueError(f"unknown fine class {fine!r}; known: {sorted(FINE_PARENT)}")
    disc = (rng.uniform(0.6, 0.68), rng.uniform(-0.02, 0.08))
    plan = Plan(fine, eye, disc, disc_r=rng.uniform(0.15, 0.17), cdr=rng.uniform(*CDR["normal"]),
                tessellation=rng.uniform(0.0, 0.25))
    PLANNERS[FINE_PARENT[fine]](plan, rng)
    return plan
