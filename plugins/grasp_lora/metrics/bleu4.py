"""Corpus BLEU-4 (percent) with sacrebleu: ``tokenize="zh"`` for Chinese, ``"13a"`` otherwise.

An ``evaluate`` metric module, loaded by path (no hub needed)::

    evaluate.load("/abs/path/plugins/grasp_lora/metrics/bleu4.py", keep_in_memory=True)
        .compute(predictions=[...], references=[[...], ...], lang="zh")

sacrebleu's defaults otherwise (4-gram, exponential smoothing, brevity penalty against the
closest reference length). Examples may have different numbers of references; missing ones are
passed to sacrebleu as ``None``.
"""

from __future__ import annotations

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus BLEU-4 (percent) with sacrebleu; zh tokenisation for Chinese, 13a otherwise."
_KWARGS = """
Args:
    predictions: list of hypotheses.
    references: list of lists of references.
    lang: language code; "zh" (or any chinese* name) selects tokenize="zh".
Returns:
    bleu4: corpus BLEU in percent.
"""
_CITATION = """@inproceedings{post-2018-call, title={A Call for Clarity in Reporting {BLEU} Scores},
author={Post, Matt}, booktitle={Proceedings of the Third Conference on Machine Translation}, year={2018}}"""


def tokenizer_for(lang: str) -> str:
    """sacrebleu tokenizer name for a language."""
    return "zh" if lang == "zh" or lang.startswith("chinese") else "13a"


def bleu_score(predictions: list[str], references: list[list[str]], lang: str) -> dict[str, float]:
    """Corpus BLEU-4 in percent."""
    if len(predictions) != len(references):
        raise ValueError(f"bleu4: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("bleu4: no predictions to score")
    if any(not refs for refs in references):
        raise ValueError("bleu4: every example needs at least one reference")
    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    result = sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenizer_for(lang))
    return {"bleu4": float(result.score)}


class Bleu4(evaluate.Metric):
    """sacrebleu corpus BLEU-4 as an ``evaluate`` metric."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions: list[str], references: list[list[str]], lang: str = "en") -> dict[str, float]:
        return bleu_score(list(predictions), [list(r) for r in references], lang)
