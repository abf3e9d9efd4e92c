"""Evaluation metrics for grasp_lora, as ``evaluate`` modules loaded by file path.

The hub is unreachable here (``evaluate.load("rouge")`` fails), so every metric is a local
``evaluate.Metric`` subclass in this folder, one file each, loaded with
``evaluate.load("<this folder>/<name>.py", keep_in_memory=True)`` - a flat file works offline;
no ``<name>/<name>.py`` folder layout is needed:

``qa_f1_em.py``     exact match and F1 with MLQA's per-language normalisation (QA tasks)
``ml_rouge.py``     ROUGE-1/2/L F with XL-Sum's multilingual scorer (jieba for Chinese)
``bleu4.py``        sacrebleu corpus BLEU-4 (``zh`` tokeniser for Chinese, ``13a`` otherwise)
``semantic_f1.py``  BERTScore-style greedy-matching F1 over caller-supplied token embeddings

All scores are in percent. :func:`compute_metrics` returns only floats; which encoder produced
``semantic_f1`` is a string, so it is not in that dict: :func:`describe_metrics` (or
``SEMANTIC_ENCODER_NOTE.format(encoder=...)``) gives the text to log next to the numbers.
The modules also expose plain functions (``qa_scores``, ``rouge_scores``, ``bleu_score``,
``semantic_scores``) for use without ``evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

METRICS_DIR = Path(__file__).resolve().parent
QA_TASKS = ("xquad", "mlqa")
SUMMARY_TASKS = ("xlsum",)
QA_KEYS = ("exact_match", "f1")
SUMMARY_KEYS = ("rouge1", "rouge2", "rougeL", "bleu4")
SEMANTIC_KEY = "semantic_f1"
SEMANTIC_ENCODER_NOTE = ("semantic_f1: BERTScore-style greedy-matching F1 (cosine, no idf, no baseline rescaling, "
                         "percent) over token embeddings from {encoder}")

_MODULES: dict[str, Any] = {}


def metric_path(name: str) -> str:
    """Absolute path of a metric module file in this folder."""
    path = METRICS_DIR / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"no grasp_lora metric module {name!r} ({path} does not exist)")
    return str(path)


def load_metric(name: str) -> Any:
    """``evaluate.load`` of a local metric module by path (cached per process)."""
    if name not in _MODULES:
        import evaluate  # slow to import; only needed when scoring

        _MODULES[name] = evaluate.load(metric_path(name), keep_in_memory=True)
    return _MODULES[name]


def _check(task: str, lang: str) -> None:
    from hpctl.errors import ConfigError

    if task not in QA_TASKS + SUMMARY_TASKS:
        raise ConfigError(f"unknown grasp_lora task {task!r} (choose from {', '.join(QA_TASKS + SUMMARY_TASKS)})")
    if lang not in ("en", "ar", "zh"):
        raise ConfigError(f"unknown language {lang!r} (choose from en, ar, zh)")


def compute_metrics(task: str, lang: str, predictions: list[str], references: list[list[str]],
                    embed_fn: Callable[[list[str]], Sequence[Any]] | None = None,
                    encoder_name: str | None = None) -> dict[str, float]:
    """Score predictions against reference lists for one task and language.

    QA tasks (xquad, mlqa): ``{"exact_match", "f1"}``. xlsum: ``{"rouge1", "rouge2", "rougeL",
    "bleu4"}`` plus ``"semantic_f1"`` when ``embed_fn`` is given; ``encoder_name`` (required then)
    names the encoder behind ``embed_fn`` so the caller can log
    ``describe_metrics(task, lang, encoder_name)``. All values in percent.
    """
    _check(task, lang)
    predictions = [str(p) for p in predictions]
    references = [[str(r) for r in refs] for refs in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    if task in QA_TASKS:
        out = load_metric("qa_f1_em").compute(predictions=predictions, references=references, lang=lang)
        return {key: float(out[key]) for key in QA_KEYS}
    scores: dict[str, float] = {}
    rouge = load_metric("ml_rouge").compute(predictions=predictions, references=references, lang=lang)
    scores.update({key: float(rouge[key]) for key in ("rouge1", "rouge2", "rougeL")})
    bleu = load_metric("bleu4").compute(predictions=predictions, references=references, lang=lang)
    scores["bleu4"] = float(bleu["bleu4"])
    if embed_fn is not None:
        if not encoder_name:
            raise ValueError("encoder_name is required with embed_fn: the output must say which encoder semantic_f1 used")
        sem = load_metric("semantic_f1").compute(predictions=predictions, references=references, embed_fn=embed_fn)
        scores[SEMANTIC_KEY] = float(sem[SEMANTIC_KEY])
    return scores


def describe_metrics(task: str, lang: str, encoder_name: str | None = None) -> dict[str, str]:
    """One line per metric key that :func:`compute_metrics` returns, saying how it was computed."""
    _check(task, lang)
    if task in QA_TASKS:
        norm = "MLQA normalisation, " + ("character tokens for Chinese" if lang == "zh" else "whitespace tokens")
        return {"exact_match": f"exact match after {norm}, best reference, percent",
                "f1": f"token F1 after {norm}, best reference, percent"}
    seg = "jieba words" if lang == "zh" else "whitespace/punctuation tokens"
    notes = {key: f"{key} F-measure, XL-Sum multilingual ROUGE ({seg}, no stemming), percent"
             for key in ("rouge1", "rouge2", "rougeL")}
    notes["bleu4"] = f"sacrebleu corpus BLEU-4, tokenize={'zh' if lang == 'zh' else '13a'}, percent"
    if encoder_name:
        notes[SEMANTIC_KEY] = SEMANTIC_ENCODER_NOTE.format(encoder=encoder_name)
    return notes
