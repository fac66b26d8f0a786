"""Corpus BLEU through sacrebleu, the implementation the field reports (WMT, WikiSplit BLEU).

A thin wrapper, so scores equal `sacrebleu.corpus_bleu` exactly. Predictions may have different
numbers of references (missing ones are passed to sacrebleu as None, which it skips).
"""

import datasets
import evaluate
import sacrebleu

_KWARGS_DESCRIPTION = """
Args:
    predictions: hypotheses, one string each.
    references: one reference string, or a list of reference strings, per prediction.
    tokenize: a sacrebleu tokenizer name, default "13a" ("intl", "char", "zh", "none" also work
        offline; "flores*" and "spm" download a model).
    lowercase: case-insensitive BLEU (default False).
    smooth_method: sacrebleu's smoothing, default "exp".
    force: silence sacrebleu's warning about already tokenized text (e.g. WikiSplit's ` .`).
Returns:
    bleu (0-100), precisions (1-4-gram, 0-100), brevity_penalty, length_ratio, sys_len, ref_len,
    signature (sacrebleu's, naming tokenizer, casing and smoothing).
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Papineni et al. (2002), ACL; Post (2018), WMT: sacreBLEU",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[  # a list of references per prediction, or a single one
                datasets.Features({"predictions": datasets.Value("string"), "references": references})
                for references in (datasets.Sequence(datasets.Value("string")), datasets.Value("string"))
            ],
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False, smooth_method="exp", force=False):
        references = [[refs] if isinstance(refs, str) else refs for refs in references]
        most = max((len(refs) for refs in references), default=0)
        streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(most)]
        bleu = sacrebleu.metrics.BLEU(
            tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method, force=force
        )
        score = bleu.corpus_score(predictions, streams)
        return {
            "bleu": score.score,
            "precisions": score.precisions,
            "brevity_penalty": score.bp,
            "length_ratio": score.ratio,
            "sys_len": score.sys_len,
            "ref_len": score.ref_len,
            "signature": str(bleu.get_signature()),
        }
