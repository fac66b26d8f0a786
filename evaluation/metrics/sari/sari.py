"""SARI (Xu et al., 2016) in the variants that published numbers were computed with.

SARI scores an edit against its source: the n-grams (n = 1..4) a prediction keeps, deletes and
adds, judged against references. Implementations disagree on tokenization, casing, counting,
0/0 and whether deletion is scored by precision or F1, and on WikiSplit that moves the score of
copying the input from 63.3 ("common") to 34.2 ("paper"). So every result names its variant;
docs/METRICS.md says exactly what each computes and how the numbers were measured.

- "common": Hugging Face `evaluate`'s `sari` (what most code reports), ported line for line.
- "paper": google-research/lasertagger `score_lib.compute_sari_scores` as `score_main.py` runs
  it; the scorer of the Google team behind BertGeneration, and the only variant here under
  which copying the input scores far below the paper's WikiSplit models.
- "t2t": tensor2tensor `sari_hook.get_sari_score` with its defaults, on whitespace tokens.
"""

import re
from collections import Counter

import datasets
import evaluate
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

SEPARATOR = "<::::>"  # WikiSplit's sentence separator (BertGenerationTokenizer's sep_token)
MAX_N = 4
_13A = Tokenizer13a()


def _ngrams(tokens, n):
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _f1(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision > 0 or recall > 0 else 0


def _common_ngram(s, c, refs):
    """One n-gram order of HF `evaluate`'s SARIngram: counts with multiplicity, each source and
    prediction count scaled by the number of references, 0/0 = 1, deletion precision only."""
    numref = len(refs)
    r = Counter(g for ref in refs for g in ref)
    s_rep = Counter({g: k * numref for g, k in Counter(s).items()})
    c_rep = Counter({g: k * numref for g, k in Counter(c).items()})

    keep = s_rep & c_rep
    keep_good = keep & r
    keep_all = s_rep & r
    keep_p = sum(keep_good[g] / keep[g] for g in keep_good) / len(keep) if keep else 1
    keep_r = sum(keep_good.values()) / sum(keep_all.values()) if keep_all else 1

    delete = s_rep - c_rep
    del_good = delete - r
    del_p = sum(del_good[g] / delete[g] for g in del_good) / len(delete) if delete else 1

    add = set(c) - set(s)
    add_good = add & set(r)
    add_all = set(r) - set(s)
    add_p = len(add_good) / len(add) if add else 1
    add_r = len(add_good) / len(add_all) if add_all else 1
    return _f1(keep_p, keep_r), del_p, _f1(add_p, add_r)


def _fbeta(true_positives, selected, relevant, beta):
    """tensor2tensor's `_get_fbeta_score`: 0/0 = 1 for precision and recall, beta 0 = precision."""
    precision = true_positives / selected if selected > 0 else 1
    if beta == 0:
        return precision
    recall = true_positives / relevant if relevant > 0 else 1
    if precision > 0 and recall > 0:
        return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)
    return 0


def _t2t_ngram(s, c, refs, beta_del):
    """One n-gram order of tensor2tensor's `get_sari_score`: n-gram *sets*; for keep and delete a
    reference n-gram weighs the share of (non-empty) references that contain it."""
    s, c = Counter(set(s)), Counter(set(c))
    nonempty = [set(ref) for ref in refs if ref]
    weighted = Counter(g for ref in nonempty for g in ref)
    for g in weighted:
        weighted[g] /= len(nonempty)
    anyref = Counter(set(weighted))

    kept, should_keep = s & c, s & weighted
    deleted, should_delete = s - c, s - weighted
    added, should_add = c - s, anyref - s
    total = lambda counts: sum(counts.values())
    keep = _fbeta(total(kept & should_keep), total(kept), total(should_keep), 1)
    delete = _fbeta(total(deleted & should_delete), total(deleted), total(should_delete), beta_del)
    add = _fbeta(total(added & anyref), total(added), total(should_add), 1)
    return keep, delete, add


VARIANTS = {
    # ngram scorer, tokenizer, lowercase, drop the WikiSplit separator
    "common": (_common_ngram, lambda text: _13A(text).split(" "), True, False),
    "paper": (lambda s, c, r: _t2t_ngram(s, c, r, beta_del=1), str.split, True, True),
    "t2t": (lambda s, c, r: _t2t_ngram(s, c, r, beta_del=0), str.split, False, False),
}


def sentence_sari(source, prediction, references, variant="common"):
    """(sari, keep, delete, add) of one sentence, each in [0, 1]."""
    score_ngram, tokenize, lowercase, drop_separator = VARIANTS[variant]

    def tokens(text):
        if drop_separator:
            text = re.sub(f" {re.escape(SEPARATOR)} ", " ", text)
        return tokenize(text.lower() if lowercase else text)

    s, c, refs = tokens(source), tokens(prediction), [tokens(ref) for ref in references]
    per_n = [score_ngram(_ngrams(s, n), _ngrams(c, n), [_ngrams(r, n) for r in refs])
             for n in range(1, MAX_N + 1)]
    keep, delete, add = (sum(scores) / MAX_N for scores in zip(*per_n))
    return (keep + delete + add) / 3, keep, delete, add


_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    sources: source sentences.
    predictions: predicted sentences.
    references: one reference string, or a list of reference strings, per prediction.
    variant: "common" (default), "paper" or "t2t"; see docs/METRICS.md.
Returns:
    sari, sari_keep, sari_delete, sari_add: means over sentences on a 0-100 scale;
    sari_variant: the variant used.
Examples:
    >>> sari.compute(sources=["About 95 species are currently accepted ."],
    ...     predictions=["About 95 you now get in ."],
    ...     references=[["About 95 species are currently known .", "About 95 species are now accepted .",
    ...                  "95 species are now accepted ."]])["sari"]
    26.953601953601954
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Sari(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Xu, Napoles, Pavlick, Chen, Callison-Burch (2016), TACL 4:401-415",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[  # a list of references per prediction, or a single one
                datasets.Features(
                    {"sources": datasets.Value("string"), "predictions": datasets.Value("string"), "references": refs}
                )
                for refs in (datasets.Sequence(datasets.Value("string")), datasets.Value("string"))
            ],
        )

    def _compute(self, sources, predictions, references, variant="common"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown SARI variant {variant!r}; known: {', '.join(VARIANTS)}")
        if not len(sources) == len(predictions) == len(references):
            raise ValueError("sources, predictions and references must have the same length")
        if not predictions:
            raise ValueError("SARI needs at least one prediction")
        references = [[refs] if isinstance(refs, str) else refs for refs in references]
        totals = [0.0] * 4
        for source, prediction, refs in zip(sources, predictions, references):
            for i, score in enumerate(sentence_sari(source, prediction, refs, variant)):
                totals[i] += score
        sari, keep, delete, add = (total / len(predictions) * 100 for total in totals)
        return dict(sari=sari, sari_keep=keep, sari_delete=delete, sari_add=add, sari_variant=variant)
