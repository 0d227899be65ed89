"""Diagnosis sentences written from an eye's planned findings, with varied wording and order.

Each disease gives (diagnosis phrase, findings that must be named because they set the fine
class, findings that may be named); a template puts the eye first or in the sentence ("left eye:
...", "... in the right eye"), and the sentence is shortened to MAX_TOKENS by dropping optional findings.
"""
from __future__ import annotations

import re

import numpy as np

from .plan import Plan
from .taxonomy import FINE_PARENT

Phrases = tuple[str, list[str], list[str]]
MAX_TOKENS = 25


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    """One of the synonyms."""
    return options[int(rng.integers(len(options)))]


def _few(rng: np.random.Generator, n: int, noun: str) -> str:
    """A count in words: 'a few haemorrhages', 'numerous haemorrhages'."""
    if n <= 4:
        return f"{_pick(rng, ['a few', 'occasional', 'isolated'])} {noun}"
    if n <= 10:
        return f"{_pick(rng, ['several', 'scattered', 'some'])} {noun}"
    return f"{_pick(rng, ['multiple', 'numerous', 'many'])} {noun}"


def _text_normal(f: dict, rng: np.random.Generator) -> Phrases:
    """A normal eye: the variant (tessellation, crescent) must be named."""
    dx = _pick(rng, ["normal fundus", "no retinopathy", "unremarkable fundus", "healthy disc and macula",
                     "no abnormality detected"])
    must = []
    if f.get("tessellated"):
        must.append(_pick(rng, ["tessellated fundus", "prominent choroidal vessels", "tigroid fundus"]))
    if f.get("crescent"):
        must.append(_pick(rng, ["myopic crescent at the disc", "temporal myopic crescent",
                                "tilted disc with myopic crescent"]))
    return dx, must, []


def _text_dr(f: dict, rng: np.random.Generator) -> Phrases:
    """Grade as the diagnosis; new vessels always named, haemorrhages counted in words."""
    npdr = _pick(rng, ["non proliferative diabetic retinopathy", "npdr", "non proliferative retinopathy"])
    pdr = _pick(rng, ["proliferative diabetic retinopathy", "pdr", "proliferative retinopathy"])
    dx = {"mild_npdr": f"{_pick(rng, ['mild', 'early'])} {npdr}", "moderate_npdr": f"moderate {npdr}",
          "severe_npdr": f"severe {npdr}", "pdr": pdr}[f["grade"]]
    must, extra = [], []
    if f.get("new_vessels"):
        must.append(_pick(rng, ["new vessels at the disc", "neovascularisation of the disc"]
                           if f["new_vessels"] == "disc" else
                           ["new vessels elsewhere", "neovascularisation along the arcade"]))
    if f.get("preretinal"):
        extra.append(_pick(rng, ["preretinal haemorrhage", "a boat shaped haemorrhage"]))
    noun = _pick(rng, ["dot blot haemorrhages", "retinal haemorrhages", "blot haemorrhages"])
    (must if f["grade"] == "mild_npdr" else extra).append(_few(rng, f["haemorrhages"], noun))
    if f["exudates"]:
        extra.append(_pick(rng, ["hard exudates", "scattered exudates", "lipid exudates"]))
    if f["cotton_wool"]:
        extra.append(_pick(rng, ["cotton wool spots", "soft exudates"]))
    return dx, must, extra


def _text_amd(f: dict, rng: np.random.Generator) -> Phrases:
    """Stage as the diagnosis; drusen, pigment and haemorrhage as findings."""
    stage = f["stage"]
    amd = _pick(rng, ["amd", "age related macular degeneration", "macular degeneration"])
    dx = {"intermediate": f"intermediate {amd}",
          "geographic_atrophy": _pick(rng, ["geographic atrophy", "atrophic amd", f"dry {amd} with atrophy"]),
          "neovascular": _pick(rng, ["neovascular amd", "wet amd", "choroidal neovascular membrane"])}[stage]
    must, extra = [], []
    if stage == "intermediate":
        must.append(_pick(rng, ["large soft drusen", "confluent drusen", "large drusen at the macula"]))
    else:
        extra.append(_pick(rng, ["drusen", "soft drusen"]))
    if f.get("pigment"):
        extra.append(_pick(rng, ["pigment clumping", "pigmentary changes"]))
    if f.get("haemorrhage"):
        must.append(_pick(rng, ["subretinal haemorrhage", "macular haemorrhage"]))
    if stage == "neovascular":
        extra.append(_pick(rng, ["grey membrane under the fovea", "exudates at the macula"]))
    return dx, must, extra


def _text_glaucoma(f: dict, rng: np.random.Generator) -> Phrases:
    """The cup-to-disc ratio is always named."""
    cdr = f["cdr"]
    dx = _pick(rng, ["glaucoma suspect", "suspected glaucoma", "early glaucoma"]) if cdr < 0.75 else (
        _pick(rng, ["advanced glaucoma", "advanced glaucomatous cupping", "glaucomatous optic neuropathy"]))
    must = [_pick(rng, [f"cup disc ratio {cdr:.1f}", f"cup to disc ratio of {cdr:.1f}",
                        f"vertical cup disc ratio {cdr:.1f}"])]
    extra = [_pick(rng, ["peripapillary atrophy", "parapapillary atrophy"])] if f.get("ppa") else []
    return dx, must, extra


def _text_melanoma(f: dict, rng: np.random.Generator) -> Phrases:
    """Size and place in the diagnosis phrase; colour, fluid and orange pigment as findings."""
    size = {"small": _pick(rng, ["small", "small elevated"]), "large": _pick(rng, ["large", "large dome shaped"])}
    mass = _pick(rng, ["choroidal melanoma", "pigmented choroidal mass", "choroidal mass suspicious of melanoma",
                       "melanoma of the choroid"])
    where = {"macular": _pick(rng, ["at the macula", "involving the macula", "under the fovea"]),
             "peripapillary": _pick(rng, ["adjacent to the disc", "next to the optic disc", "at the disc margin"]),
             "superior": _pick(rng, ["in the superior fundus", "superiorly", "above the superior arcade"]),
             "inferior": _pick(rng, ["in the inferior fundus", "inferiorly", "below the inferior arcade"])}
    dx = f"{size[f['size']]} {mass} {where[f['location']]}"
    extra = [_pick(rng, [f"{f['colour']} pigmentation", f"{f['colour']} surface"])]
    if f["orange"]:
        extra.append(_pick(rng, ["orange pigment", "overlying orange pigment"]))
    if f["fluid"]:
        extra.append(_pick(rng, ["subretinal fluid", "surrounding subretinal fluid"]))
    return dx, [], extra


PHRASES = {"normal": _text_normal, "diabetic_retinopathy": _text_dr, "amd": _text_amd,
           "glaucoma": _text_glaucoma, "melanoma": _text_melanoma}
TEMPLATES = ["{eye} eye: {dx} with {details}.", "{dx} in the {eye} eye with {details}.",
             "{details} in the {eye} eye, consistent with {dx}.", "{eye} eye shows {details}, in keeping with {dx}.",
             "{eye} fundus: {details}. impression {dx}."]
TEMPLATES_PLAIN = ["{eye} eye: {dx}.", "{dx} in the {eye} eye.", "{eye} fundus: {dx}.", "{eye} eye, {dx}."]
TEMPLATES_NORMAL = ["{eye} eye: {details}, otherwise normal.", "{details} in the {eye} eye, otherwise unremarkable.",
                    "{eye} eye shows {details}, no other abnormality.", "{eye} eye: {details}. no retinopathy."]


def tokens(text: str) -> list[str]:
    """Words, numbers and punctuation marks, the way the sentence length limits count them."""
    return re.findall(r"\d+\.\d+|[a-z]+|[.,:]", text)


def describe(plan: Plan, rng: np.random.Generator) -> str:
    """A short lower-case diagnosis sentence from the planned findings, with varied wording and order."""
    coarse = FINE_PARENT[plan.fine]
    dx, must, extra = PHRASES[coarse](plan.findings, rng)
    extra = [extra[i] for i in rng.permutation(len(extra))][: int(rng.integers(0 if must else 1, 3))]
    details = must + extra
    details = [details[i] for i in rng.permutation(len(details))]
    while True:
        if details:
            templates = TEMPLATES_NORMAL if coarse == "normal" else TEMPLATES
            text = _pick(rng, templates).format(eye=plan.eye, dx=dx, details=_join(details))
        else:
            text = _pick(rng, TEMPLATES_PLAIN).format(eye=plan.eye, dx=dx)
        if len(tokens(text)) <= MAX_TOKENS or not details:
            return text
        droppable = [d for d in details if d not in must]
        details.remove(droppable[-1] if droppable else details[-1])
