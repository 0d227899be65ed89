"""The findings extractor: hand-written sentences (synonyms, reordered findings, a wrong eye), every sentence the
generator writes, real label maps with the user's synonyms, and finding precision / recall / F1."""
import numpy as np
import pytest

from mtkd_utils.data import findings
from mtkd_utils.data.manifest import LabelMap
from mtkd_utils.data.synthetic import FINE, FINE_PARENT, describe, plan_eye
from mtkd_utils.data.synthetic.taxonomy import label_map

EXTRACT = findings.synthetic_extractor()


@pytest.mark.parametrize("text", [
    "left eye: moderate non proliferative diabetic retinopathy with several blot haemorrhages.",
    "several blot haemorrhages in the left eye, consistent with moderate npdr.",        # reordered, a synonym
    "left fundus: scattered exudates. impression moderate non proliferative retinopathy.",
])
def test_synonyms_and_order_give_the_same_findings(text):
    assert EXTRACT(text) == {"eye:left", "coarse:diabetic_retinopathy", "fine:dr_moderate_npdr"}


def test_longest_phrase_wins_and_class_defining_findings():
    # 'non proliferative diabetic retinopathy' holds 'proliferative diabetic retinopathy' (PDR): not read twice
    assert EXTRACT("right eye: severe non proliferative diabetic retinopathy.") == {
        "eye:right", "coarse:diabetic_retinopathy", "fine:dr_severe_npdr"}
    assert EXTRACT("pdr in the right eye with neovascularisation of the disc.") == {
        "eye:right", "coarse:diabetic_retinopathy", "fine:dr_pdr", "new_vessels:disc"}
    assert EXTRACT("cup to disc ratio of 0.9 in the left eye, consistent with glaucomatous optic neuropathy.") == {
        "eye:left", "coarse:glaucoma", "fine:glaucoma_cdr09", "cdr:0.9"}
    # the size belongs to the mass; 'at the macula' in 'exudates at the macula' is no melanoma location
    assert EXTRACT("right eye: large dome shaped melanoma of the choroid under the fovea.") == {
        "eye:right", "coarse:melanoma", "fine:melanoma_large", "location:macular"}
    assert EXTRACT("left eye: wet amd with exudates at the macula and macular haemorrhage.") == {
        "eye:left", "coarse:amd", "fine:amd_neovascular", "haemorrhage:subretinal"}
    # a normal variant: the variant is the fine class; plain normal is the fine class 'normal'
    assert EXTRACT("tigroid fundus in the right eye, otherwise unremarkable.") == {
        "eye:right", "coarse:normal", "fine:normal_tessellated"}
    assert EXTRACT("left eye: no abnormality detected.") == {"eye:left", "coarse:normal", "fine:normal"}


def test_wrong_eye_and_wrong_class_are_wrong_findings():
    ref = EXTRACT("left eye: intermediate age related macular degeneration with confluent drusen.")
    hyp = EXTRACT("right eye: intermediate amd with large soft drusen.")
    assert ref - hyp == {"eye:left"} and hyp - ref == {"eye:right"}
    scores = findings.finding_scores([ref], [hyp])
    assert scores["precision_micro"] == scores["recall_micro"] == pytest.approx(3 / 4)
    other = EXTRACT("left eye: geographic atrophy.")
    assert EXTRACT.fine_class("left eye: geographic atrophy.") == "amd_geographic_atrophy"
    assert findings.finding_scores([ref], [other])["f1_micro"] == pytest.approx(2 * 2 / (4 + 3))
    # a sentence naming two fine classes names none (it hedges); one naming no eye has no eye finding
    assert EXTRACT.fine_class("glaucoma suspect or advanced glaucoma.") == ""
    assert not any(f.startswith("eye:") for f in EXTRACT("normal fundus."))


def test_every_generated_sentence_gives_back_its_planned_findings():
    """The generator's own sentences, every fine class and eye, many wordings: exactly the planned findings."""
    for seed in range(60):
        for fine, _, _ in FINE:
            for eye in ("left", "right"):
                rng = np.random.default_rng([seed, 5])
                plan = plan_eye(fine, eye, rng)
                f = plan.findings
                expected = {f"eye:{eye}", f"coarse:{FINE_PARENT[fine]}", f"fine:{fine}"}
                expected |= {f"cdr:{f['cdr']}"} if "cdr" in f else set()
                expected |= {f"new_vessels:{f['new_vessels']}"} if f.get("new_vessels") else set()
                expected |= {"drusen:large"} if f.get("stage") == "intermediate" else set()
                expected |= {"haemorrhage:subretinal"} if f.get("haemorrhage") else set()
                expected |= {f"location:{f['location']}"} if "location" in f else set()
                text = describe(plan, rng)
                assert EXTRACT(text) == expected, text


def test_real_label_map_with_user_synonyms():
    labels = LabelMap.from_pairs(["normal", "dr", "amd"], [("normal", "normal"), ("dr_mild_npdr", "dr"),
                                                           ("dr_pdr", "dr"), ("amd_wet", "amd")])
    plain = findings.extractor_for(labels)
    # class names read with spaces; ODIR's keywords for its fine names
    assert plain("left eye: mild nonproliferative retinopathy") == {"eye:left", "coarse:dr", "fine:dr_mild_npdr"}
    assert plain("right eye: dr pdr") == {"eye:right", "coarse:dr", "fine:dr_pdr"}
    assert plain("right eye: neovascular membrane") == {"eye:right"}
    ours = findings.extractor_for(labels, {"amd_wet": ["neovascular membrane", "wet maculopathy"]})
    assert ours("right eye: neovascular membrane") == {"eye:right", "coarse:amd", "fine:amd_wet"}
    assert ours("left eye: normal") == {"eye:left", "coarse:normal", "fine:normal"}
    with pytest.raises(ValueError, match="'wet_amd' is not a class of the label map"):
        findings.extractor_for(labels, {"wet_amd": ["wet"]})
    with pytest.raises(ValueError, match="needs a list of phrases"):
        findings.extractor_for(labels, {"amd_wet": "wet"})
    # the synthetic label map keeps the generator's vocabulary and adds the user's words
    syn = findings.extractor_for(label_map(), {"melanoma_small": ["small naevus like lesion"]})
    assert syn("left eye: small naevus like lesion") == {"eye:left", "coarse:melanoma", "fine:melanoma_small"}
    assert syn("left eye: npdr") == {"eye:left", "coarse:diabetic_retinopathy"}   # grade not said: no fine class


def test_macro_f1_and_read_synonyms(tmp_path):
    refs = [frozenset({"a", "b"}), frozenset({"a"})]
    hyps = [frozenset({"a"}), frozenset({"a", "c"})]
    s = findings.finding_scores(refs, hyps)
    # a: 2 TP of 2 + 2 -> 1; b: 0 of 1 + 0 -> 0; c is not in any reference: not averaged
    assert s["f1_macro"] == pytest.approx(0.5)
    assert s["f1_micro"] == pytest.approx(2 * 2 / (3 + 3))
    assert findings.read_synonyms(tmp_path) == {}
    (tmp_path / findings.SYNONYMS_FILE).write_text('["not", "an", "object"]')
    with pytest.raises(ValueError, match="findings_synonyms.json"):
        findings.read_synonyms(tmp_path)
