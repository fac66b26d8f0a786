"""Rule-made sentence-fusion pairs, to give a small model far more practice in copying two
sentences whole while joining them the way WikiSplit's editors do.

The joins are learned from the real pairs: for every `A . <::::> B .` whose reference is
`A` + a few joining tokens + the rest of `B` (the low-edit cases), we record which tokens were
inserted, how many leading words of `B` were dropped and whether `B`'s first word was
lowercased, per first word of `B` ("He" -> "and", dropping "He", is common). A synthetic pair
joins two random training sentences X and Y with a join sampled from those observed for Y's
first word, or from all word-keeping joins when that word was seen too rarely.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

SEPARATOR = "<::::>"
MAX_JOIN_TOKENS = 3   # longer insertions add content, not a join
MAX_DROPPED = 3       # leading words of B a join may drop ("However ,", "He")
MIN_SEEN = 5          # a first word needs this many observed joins to have its own


def observed_join(split: str, fused: str):
    """(first word of B, inserted tokens, words of B dropped, B's next word lowercased) when
    `fused` is A (without its final ".") + a short join + the rest of B; else None."""
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
            return b[0], inserted, dropped, kept[0] != tail[0]
    return None


def _common_words(sentences: list[str]) -> set[str]:
    """Capitalized words written lowercase more often than not inside sentences (so "The" is
    lowercased after a join, "Maria" is not)."""
    inner = Counter(w for s in sentences for w in s.split()[1:])
    return {w for w in {s.split()[0] for s in sentences if s.split()}
            if w[:1].isupper() and inner[w.lower()] > inner[w]}


def synthetic_fusion_pairs(pairs: list[tuple[str, str]], count: int, seed: int = 0,
                           max_words: int = 60) -> list[tuple[str, str]]:
    """`count` (two sentences joined by the separator, one fused sentence) pairs made from the
    single sentences of the fusion `pairs` (source `A . <::::> B .`, target the fused text), at
    most `max_words` words per pair so that the model's length limit does not cut a target."""
    joins = defaultdict(list)
    for source, target in pairs:
        found = observed_join(source, target)
        if found and found[2] == 0:
            joins[found[0]].append((found[1], found[3]))
    every = [j for js in joins.values() for j in js]
    if not every:
        raise ValueError("no low-edit fusion pairs to learn joins from")
    sentences = sorted({part for source, _ in pairs for part in source.split(f" {SEPARATOR} ")
                        if part.endswith(" .") and len(part.split()) >= 4})
    common = _common_words(sentences)
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        x, y = rng.sample(sentences, 2)
        xs, ys = x.split(), y.split()
        if len(xs) + len(ys) > max_words:
            continue
        own = joins.get(ys[0], [])
        if len(own) >= MIN_SEEN:
            inserted, lowered = rng.choice(own)
        else:
            (inserted, _), lowered = rng.choice(every), ys[0] in common
        first = ys[0].lower() if lowered else ys[0]
        out.append((f"{x} {SEPARATOR} {y}", " ".join(xs[:-1] + list(inserted) + [first] + ys[1:])))
    return out
