"""ROUGE-1/2/L F-measure (percent) with XL-Sum's multilingual scorer (PyPI ``multilingual-rouge``).

An ``evaluate`` metric module, loaded by path (no hub needed; ``evaluate.load("rouge")`` needs the
hub and tokenises non-Latin scripts away)::

    evaluate.load("/abs/path/plugins/grasp_lora/metrics/ml_rouge.py", keep_in_memory=True)
        .compute(predictions=[...], references=[[...], ...], lang="ar")

``lang`` is ``en``/``ar``/``zh`` (or an XL-Sum language name such as ``arabic`` or
``chinese_simplified``). The scorer lowercases, removes Unicode punctuation and tokenises per
language: Chinese is segmented into words with jieba, Arabic and English on whitespace with
pyonmttok's aggressive mode. One fix over the package: its jieba wrapper keeps the spaces
between words as tokens (which inflates every Chinese score); here whitespace tokens are
dropped. Stemming is off by default (the package's stemmers need NLTK data that is not
available offline); ``use_stemmer=True`` uses NLTK's Snowball stemmer without stop-word lists
where Snowball covers the language (English, Arabic; Chinese has none). Per example the best
reference counts; the result is the mean over examples, in percent. A reference that has
letters or digits but yields no tokens raises ``ValueError`` instead of scoring 0.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Callable

import datasets
import evaluate
from multilingual_rouge import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
LANG_NAMES = {"en": "english", "ar": "arabic", "zh": "chinese"}
_SCORERS: dict[tuple[str, bool], rouge_scorer.RougeScorer] = {}

_DESCRIPTION = "ROUGE-1/2/L F-measure (percent) with XL-Sum's multilingual tokenisation (jieba for Chinese)."
_KWARGS = """
Args:
    predictions: list of generated summaries.
    references: list of lists of reference summaries (the best one counts per example).
    lang: en, ar, zh or an XL-Sum language name.
    use_stemmer: Snowball stemming (default False).
Returns:
    rouge1, rouge2, rougeL: mean F-measures, in percent.
"""
_CITATION = """@inproceedings{hasan-etal-2021-xl, title={{XL}-Sum: Large-Scale Multilingual Abstractive
Summarization for 44 Languages}, author={Hasan, Tahmid and others}, booktitle={Findings of ACL-IJCNLP 2021}, year={2021}}"""


def _language_name(lang: str) -> str:
    name = LANG_NAMES.get(lang, lang)
    if name.startswith("chinese"):
        return "chinese"
    return name


def _jieba_words() -> Callable[[str], list[str]]:
    """jieba word segmentation without whitespace tokens."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()

    def cut(text: str) -> list[str]:
        return [tok for tok in jieba.lcut(text) if tok.strip()]

    return cut


def _snowball(name: str) -> Callable[[str], str] | None:
    from nltk.stem import SnowballStemmer

    if name not in SnowballStemmer.languages:
        return None
    return SnowballStemmer(name, ignore_stopwords=False).stem


def get_scorer(lang: str, use_stemmer: bool = False) -> rouge_scorer.RougeScorer:
    """A cached multilingual ROUGE scorer for ``lang``."""
    name = _language_name(lang)
    key = (name, bool(use_stemmer))
    if key not in _SCORERS:
        kwargs: dict = {"lang": name}
        if name == "chinese":
            kwargs["callable_tokenizer"] = _jieba_words()
        if use_stemmer:
            stem = _snowball(name)
            if stem is not None:
                kwargs.update(use_stemmer=True, callable_stemmer=stem)
        _SCORERS[key] = rouge_scorer.RougeScorer(list(ROUGE_TYPES), **kwargs)
    return _SCORERS[key]


def _has_word_chars(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def tokenize(text: str, lang: str) -> list[str]:
    """The tokens the scorer compares (lowercased, punctuation removed, segmented)."""
    scorer = get_scorer(lang)
    return scorer._tokenizer(text.lower())  # noqa: SLF001 - the package exposes no public hook


def rouge_scores(predictions: list[str], references: list[list[str]], lang: str,
                 use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (percent), best reference per example."""
    if len(predictions) != len(references):
        raise ValueError(f"ml_rouge: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("ml_rouge: no predictions to score")
    scorer = get_scorer(lang, use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not refs:
            raise ValueError(f"ml_rouge: example {i} has no reference")
        best = dict.fromkeys(ROUGE_TYPES, 0.0)
        for ref in refs:
            if _has_word_chars(ref) and not tokenize(ref, lang):
                raise ValueError(f"ml_rouge: the {lang!r} tokenizer found no tokens in reference {i} "
                                 f"({ref[:40]!r}); refusing to score it as 0")
            scores = scorer.score(ref, pred)
            for rt in ROUGE_TYPES:
                best[rt] = max(best[rt], scores[rt].fmeasure)
        for rt in ROUGE_TYPES:
            totals[rt] += best[rt]
    return {rt: 100.0 * totals[rt] / len(predictions) for rt in ROUGE_TYPES}


class MlRouge(evaluate.Metric):
    """XL-Sum multilingual ROUGE as an ``evaluate`` metric."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://github.com/csebuetnlp/xl-sum", "https://pypi.org/project/multilingual-rouge/"],
        )

    def _compute(self, predictions: list[str], references: list[list[str]], lang: str = "en",
                 use_stemmer: bool = False) -> dict[str, float]:
        return rouge_scores(list(predictions), [list(r) for r in references], lang, use_stemmer)
