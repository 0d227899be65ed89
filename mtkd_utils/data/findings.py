"""Clinical correctness of a T3 sentence: a rule-based findings extractor and finding precision / recall / F1.

BLEU rewards a fluent sentence that names the wrong disease; report-generation work therefore also extracts
the findings a sentence states by rules (the CheXpert labeler in chest X-ray work) and scores them against the
reference's. A finding is a string: 'eye:left', 'coarse:glaucoma', 'fine:glaucoma_cdr09', and the findings that
define a fine class beyond its name ('cdr:0.9', 'new_vessels:disc', 'location:macular', 'drusen:large',
'haemorrhage:subretinal'). Optional findings the generator may leave out (exudates, fluid, ...) are not scored:
a reference that omits them would count a true statement as wrong.

Vocabulary: on the synthetic data, every wording of the generator (data/synthetic/text.py SYNONYMS); on real
data, the label map's class names (underscores read as spaces), ODIR's diagnostic keywords, and the user's own
synonyms (`data/findings_synonyms.json` in the experiment: {"class name": ["phrase", ...]}). Phrases are
matched on the workbook's tokens (data/text.py tokenize) joined by spaces; where phrases overlap, the longest
wins ('non proliferative diabetic retinopathy' is not also 'proliferative diabetic retinopathy').
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import product
from pathlib import Path

from ..io import read_json
from .text import named_eye, tokenize

Slot = dict[str, frozenset]   # phrase (tokens joined by spaces) -> the findings it states
SYNONYMS_FILE = "findings_synonyms.json"   # in the experiment's data folder: the user's own wordings per class


def _words(text: str) -> str:
    return " ".join(tokenize(text))


def _slot(phrases: Iterable[str], *findings: str) -> Slot:
    return {_words(p): frozenset(findings) for p in phrases}


class Rule:
    """A sequence of slots matched as consecutive phrases (one phrase per slot); states the union of their findings."""

    def __init__(self, *slots: Slot):
        self.slots = slots
        groups = ["(?P<s%d>%s)" % (i, "|".join(re.escape(p) for p in sorted(s, key=len, reverse=True)))
                  for i, s in enumerate(slots)]
        self.regex = re.compile(r"(?<!\S)" + " ".join(groups) + r"(?!\S)")

    def matches(self, words: str) -> list[tuple[int, int, frozenset]]:
        return [(m.start(), m.end(), frozenset().union(*(s[m.group(f"s{i}")] for i, s in enumerate(self.slots))))
                for m in self.regex.finditer(words)]


class Extractor:
    """Sentence -> set of findings, by rules over phrases; the eye from 'left' / 'right' (text.named_eye)."""

    def __init__(self, rules: Sequence[Rule], fine_parent: Mapping[str, str]):
        self.rules, self.fine_parent = list(rules), dict(fine_parent)
        # a coarse class named with none of its fine classes is its fine class of the same name, if it has one
        self.default_fine = {c: c for c in set(self.fine_parent.values()) if self.fine_parent.get(c) == c}

    def __call__(self, text: str) -> frozenset:
        eye = named_eye(text)
        return frozenset(self._implied(self._stated(_words(text))) | ({f"eye:{eye}"} if eye else set()))

    def _stated(self, words: str) -> set[str]:
        """The findings of the phrases found, longest first: a phrase inside a longer one is not read again."""
        found = sorted((m for rule in self.rules for m in rule.matches(words)), key=lambda m: (m[0] - m[1], m[0]))
        taken, out = [], set()
        for start, end, says in found:
            if (start, end) in taken or all(end <= a or start >= b for a, b in taken):   # same words: both said
                taken.append((start, end))
                out |= says
        return out

    def _implied(self, out: set[str]) -> set[str]:
        """A fine class implies its coarse class; a coarse class named alone, its same-named fine class."""
        fines = {f[5:] for f in out if f.startswith("fine:")}
        out = out | {f"coarse:{self.fine_parent[f]}" for f in fines if f in self.fine_parent}
        alone = {f[7:] for f in out if f.startswith("coarse:")} - {self.fine_parent.get(f) for f in fines}
        return out | {f"fine:{self.default_fine[c]}" for c in alone if c in self.default_fine}

    def fine_class(self, text: str) -> str:
        """The one fine class the sentence names ('' when it names none, or several)."""
        fines = [f[5:] for f in self(text) if f.startswith("fine:")]
        return fines[0] if len(fines) == 1 else ""


# ---------------------------------------------------------------- vocabularies

def _expand(template: str, **values: Sequence[str]) -> list[str]:
    """Every filling of a generator wording's blanks ('{amd}', '{cdr:.1f}') with the given values."""
    names = [n for n in values if "{" + n in template]
    return [template.format(**dict(zip(names, combo))) for combo in product(*(values[n] for n in names))]


@lru_cache(maxsize=1)
def synthetic_extractor() -> Extractor:
    """The synthetic data's findings, from the generator's own wordings (every synonym)."""
    from .synthetic.taxonomy import FINE_PARENT
    from .synthetic.text import SYNONYMS as S

    amd = S["amd"]
    ratios = [round(0.1 * k, 1) for k in range(11)]
    every = lambda what, **v: [p for t in S[what] for p in _expand(t, **v)]   # noqa: E731
    size = {**_slot(S["melanoma_small"], "fine:melanoma_small"), **_slot(S["melanoma_large"], "fine:melanoma_large")}
    mass = _slot(S["melanoma"], "coarse:melanoma")
    where = {k: v for loc in ("macular", "peripapillary", "superior", "inferior")
             for k, v in _slot(S[loc], f"location:{loc}").items()}
    npdr = _slot(S["npdr"], "coarse:diabetic_retinopathy")
    grade = {**_slot(S["mild"], "fine:dr_mild_npdr"), **_slot(["moderate"], "fine:dr_moderate_npdr"),
             **_slot(["severe"], "fine:dr_severe_npdr")}        # the grade words _text_dr writes before npdr
    rules = [Rule(size, mass, where), Rule(size, mass), Rule(mass, where), Rule(mass), Rule(grade, npdr), Rule(npdr),
             Rule(_slot(S["pdr"], "fine:dr_pdr")),
             Rule(_slot(every("amd_intermediate", amd=amd), "fine:amd_intermediate")),
             Rule(_slot(every("amd_geographic_atrophy", amd=amd), "fine:amd_geographic_atrophy")),
             Rule(_slot(S["amd_neovascular"], "fine:amd_neovascular")), Rule(_slot(amd, "coarse:amd")),
             Rule(_slot(S["glaucoma_early"], "fine:glaucoma_cdr06")),
             Rule(_slot(S["glaucoma_advanced"], "fine:glaucoma_cdr09")),
             *[Rule(_slot(every("cdr", cdr=[r]), f"cdr:{r}")) for r in ratios],
             Rule(_slot(S["normal"], "coarse:normal")), Rule(_slot(S["tessellated"], "fine:normal_tessellated")),
             Rule(_slot(S["crescent"], "fine:normal_myopic_crescent")),
             Rule(_slot(S["new_vessels_disc"], "new_vessels:disc")),
             Rule(_slot(S["new_vessels_elsewhere"], "new_vessels:elsewhere")),
             Rule(_slot(S["large_drusen"], "drusen:large")),
             Rule(_slot(S["amd_haemorrhage"], "haemorrhage:subretinal"))]
    # the optional findings state nothing scored, but claim their words ('exudates at the macula' is no location)
    optional = ("preretinal", "dr_haemorrhages", "exudates", "cotton_wool", "drusen", "pigment", "amd_membrane", "ppa",
                "orange", "fluid")
    rules += [Rule(_slot([p for w in optional for p in S[w]]))]
    return Extractor(rules, FINE_PARENT)


def _phrase_rules(said: Mapping[str, Iterable[str]]) -> list[Rule]:
    return [Rule(_slot(phrases, finding)) for finding, phrases in said.items()]


def synonym_rules(labels, synonyms: Mapping[str, Sequence[str]] | None) -> list[Rule]:
    """The user's wordings ({class name: [phrases]}): each phrase states that class (a name not in the label map,
    or phrases that are not a list of strings, is an error naming it)."""
    said: dict[str, list[str]] = {}
    for name, phrases in (synonyms or {}).items():
        level = "fine" if name in labels.fine_parent else "coarse" if name in labels.coarse else None
        if level is None:
            raise ValueError(f"findings synonyms: {name!r} is not a class of the label map; use one of the coarse "
                             f"classes {list(labels.coarse)} or the fine classes {list(labels.fine)[:20]}...")
        if isinstance(phrases, str) or not all(isinstance(p, str) for p in phrases):
            raise ValueError(f"findings synonyms: {name!r} needs a list of phrases (strings), got {phrases!r}")
        said[f"{level}:{name}"] = list(phrases)
    return _phrase_rules(said)


def label_extractor(labels, synonyms: Mapping[str, Sequence[str]] | None = None) -> Extractor:
    """Real data: each class by its name (underscores as spaces), ODIR's keywords for the fine classes named after
    them, and the user's `synonyms` (synonym_rules)."""
    from .odir import ODIR_FINE_NAMES

    said: dict[str, set[str]] = {}
    for level in ("coarse", "fine"):
        for name in getattr(labels, level):
            said.setdefault(f"{level}:{name}", set()).add(name.replace("_", " "))
    for keyword, fine in ODIR_FINE_NAMES.items():
        if fine in labels.fine_parent:
            said[f"fine:{fine}"].add(keyword)
    return Extractor(_phrase_rules(said) + synonym_rules(labels, synonyms), labels.fine_parent)


def is_synthetic(labels) -> bool:
    """The label map is the synthetic generator's (same coarse and fine classes)."""
    from .synthetic.taxonomy import label_map
    ours = label_map()
    return list(labels.coarse) == ours.coarse and dict(labels.fine_parent) == ours.fine_parent


def extractor_for(labels, synonyms: Mapping[str, Sequence[str]] | None = None) -> Extractor:
    """The synthetic generator's vocabulary for its label map, else the label map's; plus the user's synonyms
    (default: those of the experiment, which results.load_labels attaches to its label map as `findings_synonyms`)."""
    synonyms = getattr(labels, "findings_synonyms", None) if synonyms is None else synonyms
    if is_synthetic(labels):
        base = synthetic_extractor()
        return Extractor(base.rules + synonym_rules(labels, synonyms), base.fine_parent)
    return label_extractor(labels, synonyms)


def read_synonyms(data_dir: str | Path) -> dict[str, list[str]]:
    """The user's synonyms (data/findings_synonyms.json) or {} when there is no such file."""
    path = Path(data_dir) / SYNONYMS_FILE
    if not path.exists():
        return {}
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: write a JSON object {{\"class name\": [\"phrase\", ...]}}, not {type(raw).__name__}")
    return raw


# ---------------------------------------------------------------- scores

def finding_sets(texts: Iterable[str], extractor: Extractor) -> list[frozenset]:
    return [extractor(t) for t in texts]


def sentence_f1(stated: frozenset, reference: frozenset) -> float:
    """F1 of one sentence's findings against its reference's: 2 |shared| / (|stated| + |reference|); 1 when both
    state none."""
    return 2 * len(stated & reference) / (len(stated) + len(reference)) if stated or reference else 1.0


def finding_scores(references: Sequence[frozenset], hypotheses: Sequence[frozenset]) -> dict[str, float]:
    """Micro precision / recall / F1 over all (sentence, finding) pairs, and macro F1 over the findings the
    references state (each finding's F1 = 2 TP / (stated by references + stated by hypotheses))."""
    tp = sum(len(r & h) for r, h in zip(references, hypotheses))
    n_ref, n_hyp = sum(map(len, references)), sum(map(len, hypotheses))
    per_finding = []
    for f in sorted(set().union(*references)):
        ref = [f in r for r in references]
        hyp = [f in h for h in hypotheses]
        per_finding.append(2 * sum(a and b for a, b in zip(ref, hyp)) / (sum(ref) + sum(hyp)))
    nan = float("nan")
    return {"precision_micro": tp / n_hyp if n_hyp else nan, "recall_micro": tp / n_ref if n_ref else nan,
            "f1_micro": 2 * tp / (n_ref + n_hyp) if n_ref + n_hyp else nan,
            "f1_macro": sum(per_finding) / len(per_finding) if per_finding else nan}
