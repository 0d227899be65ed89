"""Diagnosis sentences written from an eye's planned findings, with varied wording and order.

Each disease gives (diagnosis phrase, findings that must be named because they set the fine
class, findings that may be named); a template puts the eye first or in the sentence ("left eye:
...", "... in the right eye"), and the sentence is shortened to MAX_TOKENS by dropping optional findings.
Every wording is one of the SYNONYMS lists ('{amd}', '{cdr:.1f}', ... are filled in when a sentence is
written): data/findings.py reads the same lists to turn a sentence back into its findings.
"""
from __future__ import annotations

import re

import numpy as np

from .plan import Plan
from .taxonomy import FINE_PARENT

Phrases = tuple[str, list[str], list[str]]
MAX_TOKENS = 25

# The generator's every wording, by what it says. The order of each list is part of the generator (a seeded
# draw picks an index): never reorder or insert, only append, and bump dataset.GENERATOR_VERSION when you do.
SYNONYMS: dict[str, list[str]] = {
    "normal": ["normal fundus", "no retinopathy", "unremarkable fundus", "healthy disc and macula",
               "no abnormality detected"],
    "tessellated": ["tessellated fundus", "prominent choroidal vessels", "tigroid fundus"],
    "crescent": ["myopic crescent at the disc", "temporal myopic crescent", "tilted disc with myopic crescent"],
    "npdr": ["non proliferative diabetic retinopathy", "npdr", "non proliferative retinopathy"],
    "pdr": ["proliferative diabetic retinopathy", "pdr", "proliferative retinopathy"],
    "mild": ["mild", "early"],
    "new_vessels_disc": ["new vessels at the disc", "neovascularisation of the disc"],
    "new_vessels_elsewhere": ["new vessels elsewhere", "neovascularisation along the arcade"],
    "preretinal": ["preretinal haemorrhage", "a boat shaped haemorrhage"],
    "dr_haemorrhages": ["dot blot haemorrhages", "retinal haemorrhages", "blot haemorrhages"],
    "exudates": ["hard exudates", "scattered exudates", "lipid exudates"],
    "cotton_wool": ["cotton wool spots", "soft exudates"],
    "amd": ["amd", "age related macular degeneration", "macular degeneration"],
    "amd_intermediate": ["intermediate {amd}"],
    "amd_geographic_atrophy": ["geographic atrophy", "atrophic amd", "dry {amd} with atrophy"],
    "amd_neovascular": ["neovascular amd", "wet amd", "choroidal neovascular membrane"],
    "large_drusen": ["large soft drusen", "confluent drusen", "large drusen at the macula"],
    "drusen": ["drusen", "soft drusen"],
    "pigment": ["pigment clumping", "pigmentary changes"],
    "amd_haemorrhage": ["subretinal haemorrhage", "macular haemorrhage"],
    "amd_membrane": ["grey membrane under the fovea", "exudates at the macula"],
    "glaucoma_early": ["glaucoma suspect", "suspected glaucoma", "early glaucoma"],
    "glaucoma_advanced": ["advanced glaucoma", "advanced glaucomatous cupping", "glaucomatous optic neuropathy"],
    "cdr": ["cup disc ratio {cdr:.1f}", "cup to disc ratio of {cdr:.1f}", "vertical cup disc ratio {cdr:.1f}"],
    "ppa": ["peripapillary atrophy", "parapapillary atrophy"],
    "melanoma_small": ["small", "small elevated"],
    "melanoma_large": ["large", "large dome shaped"],
    "melanoma": ["choroidal melanoma", "pigmented choroidal mass", "choroidal mass suspicious of melanoma",
                 "melanoma of the choroid"],
    "macular": ["at the macula", "involving the macula", "under the fovea"],
    "peripapillary": ["adjacent to the disc", "next to the optic disc", "at the disc margin"],
    "superior": ["in the superior fundus", "superiorly", "above the superior arcade"],
    "inferior": ["in the inferior fundus", "inferiorly", "below the inferior arcade"],
    "colour": ["{colour} pigmentation", "{colour} surface"],
    "orange": ["orange pigment", "overlying orange pigment"],
    "fluid": ["subretinal fluid", "surrounding subretinal fluid"],
    "few": ["a few", "occasional", "isolated"],
    "several": ["several", "scattered", "some"],
    "many": ["multiple", "numerous", "many"],
}


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    """One of the synonyms."""
    return options[int(rng.integers(len(options)))]


def _say(rng: np.random.Generator, what: str, **values) -> str:
    """One of SYNONYMS[what], with its blanks filled in."""
    return _pick(rng, [s.format(**values) for s in SYNONYMS[what]])


def _few(rng: np.random.Generator, n: int, noun: str) -> str:
    """A count in words: 'a few haemorrhages', 'numerous haemorrhages'."""
    if n <= 4:
        return f"{_say(rng, 'few')} {noun}"
    if n <= 10:
        return f"{_say(rng, 'several')} {noun}"
    return f"{_say(rng, 'many')} {noun}"


def _text_normal(f: dict, rng: np.random.Generator) -> Phrases:
    """A normal eye: the variant (tessellation, crescent) must be named."""
    dx = _say(rng, "normal")
    must = []
    if f.get("tessellated"):
        must.append(_say(rng, "tessellated"))
    if f.get("crescent"):
        must.append(_say(rng, "crescent"))
    return dx, must, []


def _text_dr(f: dict, rng: np.random.Generator) -> Phrases:
    """Grade as the diagnosis; new vessels always named, haemorrhages counted in words."""
    npdr = _say(rng, "npdr")
    pdr = _say(rng, "pdr")
    dx = {"mild_npdr": f"{_say(rng, 'mild')} {npdr}", "moderate_npdr": f"moderate {npdr}",
          "severe_npdr": f"severe {npdr}", "pdr": pdr}[f["grade"]]
    must, extra = [], []
    if f.get("new_vessels"):
        must.append(_say(rng, "new_vessels_disc" if f["new_vessels"] == "disc" else "new_vessels_elsewhere"))
    if f.get("preretinal"):
        extra.append(_say(rng, "preretinal"))
    noun = _say(rng, "dr_haemorrhages")
    (must if f["grade"] == "mild_npdr" else extra).append(_few(rng, f["haemorrhages"], noun))
    if f["exudates"]:
        extra.append(_say(rng, "exudates"))
    if f["cotton_wool"]:
        extra.append(_say(rng, "cotton_wool"))
    return dx, must, extra


def _text_amd(f: dict, rng: np.random.Generator) -> Phrases:
    """Stage as the diagnosis; drusen, pigment and haemorrhage as findings."""
    stage = f["stage"]
    amd = _say(rng, "amd")
    dx = {"intermediate": SYNONYMS["amd_intermediate"][0].format(amd=amd),
          "geographic_atrophy": _say(rng, "amd_geographic_atrophy", amd=amd),
          "neovascular": _say(rng, "amd_neovascular")}[stage]
    must, extra = [], []
    if stage == "intermediate":
        must.append(_say(rng, "large_drusen"))
    else:
        extra.append(_say(rng, "drusen"))
    if f.get("pigment"):
        extra.append(_say(rng, "pigment"))
    if f.get("haemorrhage"):
        must.append(_say(rng, "amd_haemorrhage"))
    if stage == "neovascular":
        extra.append(_say(rng, "amd_membrane"))
    return dx, must, extra


def _text_glaucoma(f: dict, rng: np.random.Generator) -> Phrases:
    """The cup-to-disc ratio is always named."""
    cdr = f["cdr"]
    dx = _say(rng, "glaucoma_early") if cdr < 0.75 else _say(rng, "glaucoma_advanced")
    must = [_say(rng, "cdr", cdr=cdr)]
    extra = [_say(rng, "ppa")] if f.get("ppa") else []
    return dx, must, extra


def _text_melanoma(f: dict, rng: np.random.Generator) -> Phrases:
    """Size and place in the diagnosis phrase; colour, fluid and orange pigment as findings."""
    size = {"small": _say(rng, "melanoma_small"), "large": _say(rng, "melanoma_large")}
    mass = _say(rng, "melanoma")
    where = {loc: _say(rng, loc) for loc in ("macular", "peripapillary", "superior", "inferior")}
    dx = f"{size[f['size']]} {mass} {where[f['location']]}"
    extra = [_say(rng, "colour", colour=f["colour"])]
    if f["orange"]:
        extra.append(_say(rng, "orange"))
    if f["fluid"]:
        extra.append(_say(rng, "fluid"))
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
