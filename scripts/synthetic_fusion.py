"""A fusion rule learned from WikiSplit's pairs, and the rule-made pairs it writes, which give
a small model far more practice in copying two sentences whole while joining them.

For every `A . <::::> B .` whose reference is `A` + a few joining tokens + the rest of `B`
(the low-edit cases) we record the join: which tokens were inserted, which leading words of
`B` were dropped ("He" -> ", and" drops "He") and whether `B`'s next word was lowercased.
`JoinRule.learn` keeps, per first word of `B`, the one observed join that scores best (SARI)
on the pairs whose `B` starts with that word, and one word-keeping join for the other words.
Applied to an input it is a fusion baseline; applied to two random training sentences X and Y
it makes a training pair. One join per word, not a sample of them: a model imitates the most
frequent join it sees, and the most frequent one (`and`, dropping "He") is not the one that
scores best (`, and`, dropping "He").

Two random sentences are unrelated, so dropping Y's "He" would change the meaning of a made
pair (`The band formed in 1994 , and left ...`): `JoinRule.join_unrelated` drops only where X
starts with the same word (its subject), and keeps it otherwise (`, and he left`); half the
pairs whose Y starts with such a word get an X that starts with it too, so that a model sees
both sides. On validation that rule scores within 0.1 SARI of the dropping one.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass

SEPARATOR = "<::::>"
MAX_JOIN_TOKENS = 3   # longer insertions add content, not a join
MAX_DROPPED = 3       # leading words of B a join may drop ("However ,", "He")
MIN_SEEN = 5          # a first word needs this many observed joins to have its own
CANDIDATES = 6        # the most frequent joins of a word that are scored
SCORED_PAIRS = 200    # pairs per word a candidate join is scored on

# (inserted tokens, dropped leading words of B, B's next word lowercased: True, False, or None
# for "as the language does": lowercased when it is a common word such as "The")
Join = tuple[tuple[str, ...], tuple[str, ...], bool | None]


def observed_join(split: str, fused: str):
    """(first word of B, inserted tokens, leading words of B dropped, B's next kept word
    lowercased) when `fused` is A (without its final ".") + a short join + the rest of B;
    else None."""
    parts = split.split(f" {SEPARATOR} ")
    if len(parts) != 2:
        return None
    a, b, f = parts[0].split(), parts[1].split(), fused.split()
    if len(a) < 2 or a[-1] != "." or len(b) < 2 or f[:len(a) - 1] != a[:-1]:
        return None
    rest = f[len(a) - 1:]
    for dropped in range(MAX_DROPPED + 1):
        tail = b[dropped:]
        if len(tail) < 2 or len(rest) < len(tail):
            break
        kept = rest[len(rest) - len(tail):]
        if [w.lower() for w in kept] == [w.lower() for w in tail]:
            inserted = tuple(rest[:len(rest) - len(tail)])
            if len(inserted) > MAX_JOIN_TOKENS or not all(t.isalpha() or t in ",;:" for t in inserted):
                return None
            return b[0], inserted, tuple(b[:dropped]), kept[0] != tail[0]
    return None


def _common_words(sentences: list[str]) -> set[str]:
    """Capitalized words written lowercase more often than not inside sentences (so "The" is
    lowercased after a join, "Maria" is not)."""
    inner = Counter(w for s in sentences for w in s.split()[1:])
    return {w for w in {s.split()[0] for s in sentences if s.split()}
            if w[:1].isupper() and inner[w.lower()] > inner[w]}


def sari(predictions: list[str], references: list[str], sources: list[str]) -> float:
    """SARI (common variant), the score a join is chosen by."""
    from evaluation.metrics import compute  # the repository root is on sys.path (build_bundled, tests)
    return compute("sari", predictions, [[r] for r in references], sources=sources)["sari"]


@dataclass(frozen=True)
class JoinRule:
    """Fuses `A . <::::> B .` with the join learned for B's first word."""

    joins: dict[str, Join]   # first word of B -> its best join
    fallback: Join           # for first words seen fewer than MIN_SEEN times; keeps B whole
    common: frozenset[str]   # capitalized words lowercased after a join ("The", not "Maria")

    @classmethod
    def learn(cls, pairs: list[tuple[str, str]], score=sari) -> "JoinRule":
        observed: dict[str, Counter] = defaultdict(Counter)
        for source, target in pairs:
            found = observed_join(source, target)
            if found:
                observed[found[0]][found[1:]] += 1
        keeping = Counter()
        for counts in observed.values():
            for (inserted, dropped, _), n in counts.items():
                if not dropped:
                    keeping[(inserted, (), None)] += n
        if not keeping:
            raise ValueError("no low-edit fusion pairs to learn joins from")
        common = frozenset(_common_words(_sentences(pairs)))
        by_word = defaultdict(list)
        for source, target in pairs:
            parts = source.split(f" {SEPARATOR} ")
            if len(parts) == 2 and parts[1].split():
                by_word[parts[1].split()[0]].append((source, target))

        def best(candidates: list[Join], rows) -> Join:
            rows = rows[:SCORED_PAIRS]
            sources, references = [s for s, _ in rows], [t for _, t in rows]
            return max(candidates, key=lambda join: score(
                [fuse(s, join, common) or s for s in sources], references, sources))

        joins = {word: best([j for j, _ in counts.most_common(CANDIDATES)], by_word[word])
                 for word, counts in observed.items() if sum(counts.values()) >= MIN_SEEN}
        fallback = best([j for j, _ in keeping.most_common(CANDIDATES)],
                        [p for w, rows in by_word.items() if w not in joins for p in rows])
        return cls(joins, fallback, common)

    def __call__(self, source: str) -> str:
        """The rule as a fusion baseline: the input unchanged where no join applies."""
        parts = source.split(f" {SEPARATOR} ")
        first = parts[1].split()[:1] if len(parts) == 2 else []
        join = self.joins.get(first[0], self.fallback) if first else self.fallback
        return fuse(source, join, self.common) or fuse(source, self.fallback, self.common) or source


    def join_unrelated(self, source: str) -> str:
        """The rule for a made pair `X . <::::> Y .` of two unrelated sentences: a join that
        drops Y's leading words ("He") drops them only where X starts with them too."""
        parts = source.split(f" {SEPARATOR} ")
        if len(parts) == 2:
            x, y = parts[0].split(), parts[1].split()
            inserted, dropped, _ = self.joins.get(y[0], self.fallback) if y else self.fallback
            if dropped and tuple(x[:len(dropped)]) != dropped:
                return fuse(source, (inserted, (), None), self.common) or self(source)
        return self(source)

    def drops(self, word: str) -> bool:
        """Whether the join of sentences starting with `word` drops it (He, She, They)."""
        return bool(self.joins.get(word, self.fallback)[1])


def fuse(source: str, join: Join, common: frozenset[str]) -> str | None:
    """`A . <::::> B` fused with `join`; None when the input has another shape or B does not
    start with the words the join drops."""
    parts = source.split(f" {SEPARATOR} ")
    if len(parts) != 2:
        return None
    xs, ys = parts[0].split(), parts[1].split()
    inserted, dropped, lowered = join
    if len(xs) < 2 or xs[-1] != "." or len(ys) < len(dropped) + 2 or tuple(ys[:len(dropped)]) != dropped:
        return None
    kept = ys[len(dropped):]
    if lowered is None:
        lowered = kept[0] in common
    first = kept[0].lower() if lowered else kept[0]
    return " ".join(xs[:-1] + list(inserted) + [first] + kept[1:])


def _sentences(pairs: list[tuple[str, str]]) -> list[str]:
    """The single sentences of the fusion pairs' sources."""
    return sorted({part for source, _ in pairs for part in source.split(f" {SEPARATOR} ")
                   if part.endswith(" .") and len(part.split()) >= 4})


def synthetic_fusion_pairs(pairs: list[tuple[str, str]], count: int, seed: int = 0,
                           max_words: int = 60, rule: JoinRule | None = None) -> list[tuple[str, str]]:
    """`count` (two sentences joined by the separator, one fused sentence) pairs made from the
    single sentences of the fusion `pairs` (source `A . <::::> B .`, target the fused text) by
    `rule` (learned from `pairs` when not given), at most `max_words` words per pair so that
    the model's length limit does not cut a target."""
    rule = rule or JoinRule.learn(pairs)
    sentences = _sentences(pairs)
    by_first = defaultdict(list)
    for sentence in sentences:
        by_first[sentence.split()[0]].append(sentence)
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        x, y = rng.sample(sentences, 2)
        first = y.split()[0]
        if rule.drops(first) and rng.random() < 0.5:  # X's subject is Y's pronoun: the join may drop it
            x = rng.choice(by_first[first])
            if x == y:
                continue
        if len(x.split()) + len(y.split()) > max_words:
            continue
        source = f"{x} {SEPARATOR} {y}"
        out.append((source, rule.join_unrelated(source)))
    return out


PRONOUNS = ("He", "She", "It", "They")


def _pronoun_fate(b: str, fused: str) -> str:
    """"keep", "drop" or "other": what `fused` did with the leading pronoun of sentence `b`
    (its next three words found right after the pronoun, found alone, or not found)."""
    words = b.split()
    rest = " ".join(words[1:4]).lower()
    text = f" {fused.lower()} "
    if f" {words[0].lower()} {rest} " in text:
        return "keep"
    return "drop" if f" {rest} " in text else "other"


def pronoun_report(sources: list[str], outputs: list[str], references: list[str]) -> dict:
    """How a fusion system treats a leading He / She / It / They of the second sentence, next
    to the references: dropping it is right only where it is the first sentence's subject."""
    out = {"rows": 0, "dropped": 0, "kept": 0, "reference_dropped": 0, "reference_kept": 0,
           "dropped_where_reference_kept": 0}
    for source, output, reference in zip(sources, outputs, references):
        parts = source.split(f" {SEPARATOR} ")
        if len(parts) != 2 or parts[1].split()[:1] == [] or parts[1].split()[0] not in PRONOUNS:
            continue
        mine, theirs = _pronoun_fate(parts[1], output), _pronoun_fate(parts[1], reference)
        out["rows"] += 1
        out["dropped"] += mine == "drop"
        out["kept"] += mine == "keep"
        out["reference_dropped"] += theirs == "drop"
        out["reference_kept"] += theirs == "keep"
        out["dropped_where_reference_kept"] += mine == "drop" and theirs == "keep"
    return out
