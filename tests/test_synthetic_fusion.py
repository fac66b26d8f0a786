"""The rule-made fusion pairs the bundled fusion model is fine-tuned on (scripts/synthetic_fusion.py)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from synthetic_fusion import observed_join, synthetic_fusion_pairs  # noqa: E402

WIKISPLIT = ROOT.parent / "shared" / "data" / "wikisplit"
SPLIT = "Maria studied physics in Vienna . <::::> She moved to Zurich to teach ."


@pytest.mark.parametrize("fused, join", [
    ("Maria studied physics in Vienna , and she moved to Zurich to teach .", ("She", (",", "and"), 0, True)),
    ("Maria studied physics in Vienna and moved to Zurich to teach .", ("She", ("and",), 1, False)),
    ("Maria studied physics in Vienna ; She moved to Zurich to teach .", ("She", (";",), 0, False)),
    ("Maria , who studied physics in Vienna , moved to Zurich .", None),  # reworded: not a join
    ("Maria studied physics in Vienna , and in 1990 she moved to Zurich to teach .", None),  # adds content
])
def test_observed_join(fused, join):
    assert observed_join(SPLIT, fused) == join


@pytest.mark.skipif(not WIKISPLIT.is_dir(), reason=f"WikiSplit data not found at {WIKISPLIT}")
def test_synthetic_pairs_join_two_whole_sentences_reproducibly():
    from bertgen.data import read_wikisplit
    pairs = read_wikisplit(WIKISPLIT / "tune.tsv", "fusion")
    made = synthetic_fusion_pairs(pairs, 300, seed=1)
    assert made == synthetic_fusion_pairs(pairs, 300, seed=1) != synthetic_fusion_pairs(pairs, 300, seed=2)
    assert len(made) == 300 and len(set(made)) > 290
    for source, target in made:
        x, y = source.split(" <::::> ")
        assert "<::::>" not in target and len(x.split()) + len(y.split()) <= 60
        assert target.startswith(x[:-2]) and target.lower().endswith(" " + y.lower().split(" ", 1)[1])
        join = target[len(x) - 2:len(target) - len(y)].split()
        assert len(join) <= 4, (source, target)  # at most 3 inserted tokens + Y's first word
