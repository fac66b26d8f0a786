"""Exact match: the share of predictions equal to one of their references (the papers' "Exact").

Runs of white space count as one space and leading/trailing space is ignored, because decoders
differ in how they detokenize spacing and that is not what the score is meant to judge.
Case matters unless `ignore_case=True`; LaserTagger's scorer (behind the BertGeneration paper's
DiscoFuse/WikiSplit "Exact") compares lowercased strings, so pass `ignore_case=True` to compare
with the paper. Punctuation and articles are kept (unlike SQuAD's exact match).
"""

import datasets
import evaluate

_KWARGS_DESCRIPTION = """
Args:
    predictions: one string each.
    references: one reference string, or a list of reference strings, per prediction.
    ignore_case: compare case-insensitively (default False).
Returns:
    exact_match: percentage (0-100) of predictions that match a reference.
"""


def _normalize(text, ignore_case):
    text = " ".join(text.split())
    return text.lower() if ignore_case else text


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[  # a list of references per prediction, or a single one
                datasets.Features({"predictions": datasets.Value("string"), "references": references})
                for references in (datasets.Sequence(datasets.Value("string")), datasets.Value("string"))
            ],
        )

    def _compute(self, predictions, references, ignore_case=False):
        if not predictions:
            raise ValueError("exact match needs at least one prediction")
        matches = 0
        for prediction, refs in zip(predictions, references):
            refs = [refs] if isinstance(refs, str) else refs
            prediction = _normalize(prediction, ignore_case)
            matches += any(prediction == _normalize(ref, ignore_case) for ref in refs)
        return {"exact_match": 100 * matches / len(predictions)}
