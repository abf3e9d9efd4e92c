"""Exact match and token F1 for extractive QA with MLQA's per-language normalisation.

An ``evaluate`` metric module, loaded by path (no hub needed)::

    evaluate.load("/abs/path/plugins/grasp_lora/metrics/qa_f1_em.py", keep_in_memory=True)
        .compute(predictions=["Cairo"], references=[["Cairo", "the city of Cairo"]], lang="ar")

It follows MLQA's official ``mlqa_evaluation_v1.py``: lowercase; remove punctuation (every
Unicode character whose category starts with ``P`` plus ``string.punctuation``); remove articles
with the language's regex (en ``\\b(a|an|the)\\b``, ar ``\\sال^|ال`` - which in practice replaces
every occurrence of ``ال`` by a space, as MLQA does -, es/de/vi their article lists, hi and zh
none); tokenise on whitespace, except Chinese, which uses MLQA's mixed segmentation (each CJK
character in U+4E00..U+9FA5 and each punctuation mark is a token, runs of other characters are
split on whitespace). Per question the best score over its references counts; the result is
the mean over questions in percent (0-100). As in MLQA, F1 is 0 when no token is shared (also
when both sides normalise to nothing).
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter

import datasets
import evaluate

PUNCT = frozenset(
    {chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")}
    | set(string.punctuation)
)
WHITESPACE_LANGS = ("en", "es", "hi", "vi", "de", "ar")
MIXED_SEGMENTATION_LANGS = ("zh",)
LANGUAGES = WHITESPACE_LANGS + MIXED_SEGMENTATION_LANGS

_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "ar": re.compile(r"\sال^|ال"),
}
_CJK = re.compile(r"[\u4e00-\u9fa5]")

_DESCRIPTION = "Exact match and token F1 (percent) with MLQA's per-language answer normalisation."
_KWARGS = """
Args:
    predictions: list of predicted answer strings.
    references: list of lists of gold answers (the best-matching one counts per question).
    lang: answer language, one of en, es, de, vi, hi, ar, zh.
Returns:
    exact_match, f1: means over questions, in percent.
"""
_CITATION = """@article{lewis2019mlqa, title={MLQA: Evaluating Cross-lingual Extractive Question Answering},
author={Lewis, Patrick and Oguz, Barlas and Rinott, Ruty and Riedel, Sebastian and Schwenk, Holger},
journal={arXiv preprint arXiv:1910.07475}, year={2019}}"""


def _check_lang(lang: str) -> None:
    if lang not in LANGUAGES:
        raise ValueError(f"qa_f1_em: unknown answer language {lang!r} (choose from {', '.join(LANGUAGES)})")


def mixed_segmentation(text: str) -> list[str]:
    """MLQA's Chinese tokenisation: CJK characters and punctuation alone, other runs split on spaces."""
    tokens: list[str] = []
    run = ""
    for char in text:
        if _CJK.search(char) or char in PUNCT:
            tokens.extend(run.split())
            run = ""
            tokens.append(char)
        else:
            run += char
    tokens.extend(run.split())
    return tokens


def normalize_answer(text: str, lang: str) -> str:
    """Lowercase, drop punctuation and articles, rejoin tokens with single spaces (MLQA order)."""
    _check_lang(lang)
    text = "".join(ch for ch in text.lower() if ch not in PUNCT)
    if lang in _ARTICLES:
        text = _ARTICLES[lang].sub(" ", text)
    tokens = mixed_segmentation(text) if lang in MIXED_SEGMENTATION_LANGS else text.split()
    return " ".join(t for t in tokens if t.strip())


def f1_score(prediction: str, reference: str, lang: str) -> float:
    """Token F1 in [0, 1] between one prediction and one reference."""
    pred = normalize_answer(prediction, lang).split()
    ref = normalize_answer(reference, lang).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, reference: str, lang: str) -> float:
    """1.0 when both normalise to the same string, else 0.0."""
    return float(normalize_answer(prediction, lang) == normalize_answer(reference, lang))


def qa_scores(predictions: list[str], references: list[list[str]], lang: str) -> dict[str, float]:
    """Mean exact match and F1 (percent), best reference per question."""
    _check_lang(lang)
    if len(predictions) != len(references):
        raise ValueError(f"qa_f1_em: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("qa_f1_em: no predictions to score")
    em = f1 = 0.0
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not refs:
            raise ValueError(f"qa_f1_em: question {i} has no reference answers")
        em += max(exact_match_score(pred, ref, lang) for ref in refs)
        f1 += max(f1_score(pred, ref, lang) for ref in refs)
    n = len(predictions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


class QaF1Em(evaluate.Metric):
    """MLQA exact match / F1 as an ``evaluate`` metric."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://github.com/facebookresearch/MLQA"],
        )

    def _compute(self, predictions: list[str], references: list[list[str]], lang: str = "en") -> dict[str, float]:
        return qa_scores(list(predictions), [list(r) for r in references], lang)
