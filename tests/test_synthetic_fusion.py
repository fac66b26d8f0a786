"""The learned fusion rule and the rule-made pairs the bundled fusion model is fine-tuned on
(scripts/synthetic_fusion.py)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from synthetic_fusion import JoinRule, fuse, observed_join, pronoun_report, synthetic_fusion_pairs  # noqa: E402

WIKISPLIT = ROOT.parent / "shared" / "data" / "wikisplit"
SPLIT = "Maria studied physics in Vienna . <::::> She moved to Zurich to teach ."


@pytest.mark.parametrize("fused, join", [
    ("Maria studied physics in Vienna , and she moved to Zurich to teach .", ("She", (",", "and"), (), True)),
    ("Maria studied physics in Vienna and moved to Zurich to teach .", ("She", ("and",), ("She",), False)),
    ("Maria studied physics in Vienna ; She moved to Zurich to teach .", ("She", (";",), (), False)),
    ("Maria , who studied physics in Vienna , moved to Zurich .", None),  # reworded: not a join
    ("Maria studied physics in Vienna , and in 1990 she moved to Zurich to teach .", None),  # adds content
])
def test_observed_join(fused, join):
    assert observed_join(SPLIT, fused) == join


@pytest.mark.parametrize("join, fused", [
    (((",", "and"), ("She",), False), "Maria studied physics in Vienna , and moved to Zurich to teach ."),
    (((",",), (), True), "Maria studied physics in Vienna , she moved to Zurich to teach ."),
    (((";",), (), None), "Maria studied physics in Vienna ; She moved to Zurich to teach ."),  # "She" is no common word
    ((("and",), ("He",), False), None),  # B does not start with the dropped word
])
def test_fuse_applies_a_join(join, fused):
    assert fuse(SPLIT, join, frozenset({"The"})) == fused
    assert fuse("One sentence only .", join, frozenset()) is None


def _pairs(first_words):
    """`A . <::::> W moved ...` fused as `A , and moved ...` (odd rows of "She") or `A ; W moved ...`."""
    return [(f"Maria studied physics in city{i} . <::::> {w} moved to Zurich to teach .",
             f"Maria studied physics in city{i} , and moved to Zurich to teach ." if w == "She" and i % 2 else
             f"Maria studied physics in city{i} ; {w} moved to Zurich to teach .")
            for i, w in enumerate(first_words)]


def test_join_rule_keeps_the_best_scoring_join_per_first_word():
    pairs = _pairs(["She"] * 7 + ["Anna"] * 3 + ["Tom"] * 3)
    # a score that prefers outputs with ", and": "She" gets it (dropping "She") though "; She"
    # was seen more often; the rarely seen names share the fallback, a join that keeps B whole
    rule = JoinRule.learn(pairs, score=lambda preds, refs, srcs: sum(", and" in p for p in preds))
    assert rule.joins == {"She": ((",", "and"), ("She",), False)}
    assert rule.fallback == ((";",), (), None)
    assert rule(SPLIT) == "Maria studied physics in Vienna , and moved to Zurich to teach ."
    assert rule("A short one . <::::> Tom left .") == "A short one ; Tom left ."
    assert rule("not two sentences") == "not two sentences"
    # for made pairs of unrelated sentences: "She" is dropped only where X starts with "She"
    assert rule.drops("She") and not rule.drops("Tom")
    assert rule.join_unrelated(SPLIT) == "Maria studied physics in Vienna , and She moved to Zurich to teach ."
    assert rule.join_unrelated("She studied physics . <::::> She moved to Zurich .") == \
        "She studied physics , and moved to Zurich ."
    assert rule.join_unrelated("A short one . <::::> Tom left .") == "A short one ; Tom left ."
    with pytest.raises(ValueError, match="no low-edit"):
        JoinRule.learn([(SPLIT, "Something else entirely .")])


@pytest.fixture(scope="module")
def tune_pairs():
    if not WIKISPLIT.is_dir():
        pytest.skip(f"WikiSplit data not found at {WIKISPLIT}")
    from bertgen.data import read_wikisplit
    return read_wikisplit(WIKISPLIT / "tune.tsv", "fusion")


@pytest.fixture(scope="module")
def tune_rule(tune_pairs):
    return JoinRule.learn(tune_pairs)


def test_learned_rule_drops_a_leading_he_and_scores_above_its_candidates(tune_pairs, tune_rule):
    from synthetic_fusion import sari
    rule = tune_rule
    assert rule.joins["He"][1] == ("He",)  # tune.tsv's editors drop "He" more often than not
    he = [p for p in tune_pairs if p[0].split(" <::::> ")[1].startswith("He ")][:200]
    sources, refs = [s for s, _ in he], [t for _, t in he]
    learned = sari([rule(s) for s in sources], refs, sources)
    kept = sari([fuse(s, ((",", "and"), (), True), rule.common) for s in sources], refs, sources)
    assert learned > kept > sari(sources, refs, sources)  # ", and" + drop > ", and he" > copying


def test_synthetic_pairs_are_the_rule_applied_to_two_sentences_reproducibly(tune_pairs, tune_rule):
    rule = tune_rule
    made = synthetic_fusion_pairs(tune_pairs, 1000, seed=1, rule=rule)
    assert made == synthetic_fusion_pairs(tune_pairs, 1000, seed=1, rule=rule)
    assert made != synthetic_fusion_pairs(tune_pairs, 1000, seed=2, rule=rule)
    assert len(made) == 1000 and len(set(made)) > 990
    sentences = {part for source, _ in tune_pairs for part in source.split(" <::::> ")}
    for source, target in made:
        x, y = source.split(" <::::> ")
        assert x in sentences and y in sentences and len(x.split()) + len(y.split()) <= 60
        assert target == rule.join_unrelated(source) and "<::::>" not in target and target.startswith(x[:-2])
    # a dropped pronoun is always X's subject; half the pairs whose Y starts with one get such an X
    dropping = [(s.split(" <::::> "), t) for s, t in made if rule.drops(s.split(" <::::> ")[1].split()[0])]
    same = [(x, y, t) for (x, y), t in dropping if x.split()[0] == y.split()[0]]
    assert 0.3 < len(same) / len(dropping) < 0.7
    for (x, y), t in dropping:
        dropped = f" {' '.join(y.split()[:3])}".lower() not in t.lower()
        assert dropped == (x.split()[0] == y.split()[0])


def test_pronoun_report_counts_drops_against_the_references():
    band = "The band formed in 1994 . <::::> He left the band later ."
    sources = [SPLIT, SPLIT, band, band, "One . <::::> The end came ."]
    outputs = ["Maria studied physics in Vienna , and moved to Zurich to teach .",   # dropped, as the reference
               "Maria studied physics in Vienna ; she moved to Zurich to teach .",   # kept
               "The band formed in 1994 , and left the band later .",               # dropped, reference kept
               "The band formed in 1994 ; he left the band later .",
               "One , and the end came ."]                                           # not a pronoun row
    references = [outputs[0], outputs[0], outputs[3], "The band , which he left later , formed in 1994 .", outputs[4]]
    assert pronoun_report(sources, outputs, references) == {
        "rows": 4, "dropped": 2, "kept": 2, "reference_dropped": 2, "reference_kept": 1,
        "dropped_where_reference_kept": 1}
