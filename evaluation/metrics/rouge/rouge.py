"""ROUGE-1/2/L/Lsum F1 through Google's `rouge_score`, the package summarization papers report.

Means of per-example F1 (no bootstrap), with the Porter stemmer, on a 0-100 scale. With several
references an example takes its best reference per ROUGE type (`score_multi`).

rougeLsum needs one sentence per line, and `rouge_score`'s own splitter wants nltk's punkt data,
which is not installed here. We split with a regular expression instead: a sentence ends at
`.`, `!` or `?` (optionally followed by a closing quote or bracket) followed by white space, and
at every existing line break. It does not know abbreviations ("Dr. Smith" is split), which moves
rougeLsum slightly against punkt-split scores; ROUGE-1/2/L ignore line breaks and are unaffected.
"""

import re

import datasets
import evaluate
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]’”]))\s+|\n+")


def split_sentences(text):
    """One sentence per line, for rougeLsum."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


_KWARGS_DESCRIPTION = """
Args:
    predictions: summaries, one string each.
    references: one reference string, or a list of reference strings, per prediction.
Returns:
    rouge1, rouge2, rougeL, rougeLsum: mean F1 over examples, 0-100.
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Lin (2004), ROUGE: A Package for Automatic Evaluation of Summaries",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[  # a list of references per prediction, or a single one
                datasets.Features({"predictions": datasets.Value("string"), "references": references})
                for references in (datasets.Sequence(datasets.Value("string")), datasets.Value("string"))
            ],
        )

    def _compute(self, predictions, references):
        if not predictions:
            raise ValueError("ROUGE needs at least one prediction")
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
        totals = dict.fromkeys(ROUGE_TYPES, 0.0)
        for prediction, refs in zip(predictions, references):
            refs = [refs] if isinstance(refs, str) else refs
            scores = scorer.score_multi([split_sentences(r) for r in refs], split_sentences(prediction))
            for rouge_type in ROUGE_TYPES:
                totals[rouge_type] += scores[rouge_type].fmeasure
        return {rouge_type: 100 * total / len(predictions) for rouge_type, total in totals.items()}
