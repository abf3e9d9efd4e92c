"""BERTScore-style semantic F1 (percent) from token embeddings supplied by the caller.

An ``evaluate`` metric module, loaded by path (no hub needed)::

    evaluate.load("/abs/path/plugins/grasp_lora/metrics/semantic_f1.py", keep_in_memory=True)
        .compute(predictions=[...], references=[[...], ...], embed_fn=embed)

``embed_fn(texts: list[str]) -> list[torch.Tensor]`` returns one ``(n_tokens, d)`` tensor per
text (in grasp_lora: the frozen backbone's hidden states; the caller names that encoder in its
output). As in BERTScore (Zhang et al., 2020) without idf weighting and without baseline
rescaling: token vectors are L2-normalised; recall is the mean over reference tokens of the best
cosine similarity with any prediction token, precision the mean over prediction tokens of the
best similarity with any reference token, F1 their harmonic mean. With several references the
best F1 counts (as bert-score does). A text with no tokens scores 0. Results are means over
examples, in percent (cosines can be negative, so values may fall below 0).
"""

from __future__ import annotations

from typing import Callable, Sequence

import datasets
import evaluate
import torch

EmbedFn = Callable[[list[str]], Sequence[torch.Tensor]]

_DESCRIPTION = "BERTScore-style greedy-matching F1 (no idf, no rescaling) over caller-supplied token embeddings."
_KWARGS = """
Args:
    predictions: list of generated texts.
    references: list of lists of references (the best F1 counts per example).
    embed_fn: callable mapping a list of texts to a list of (n_tokens, d) tensors.
Returns:
    semantic_precision, semantic_recall, semantic_f1: means over examples, in percent.
"""
_CITATION = """@inproceedings{zhang2020bertscore, title={BERTScore: Evaluating Text Generation with BERT},
author={Zhang, Tianyi and Kishore, Varsha and Wu, Felix and Weinberger, Kilian Q. and Artzi, Yoav},
booktitle={ICLR}, year={2020}}"""


def greedy_match(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """(precision, recall, F1) in [-1, 1] between two token-embedding matrices."""
    if pred.ndim != 2 or ref.ndim != 2 or (pred.numel() and ref.numel() and pred.shape[1] != ref.shape[1]):
        raise ValueError(f"semantic_f1: embeddings must be (n_tokens, d) with one d, "
                         f"got {tuple(pred.shape)} and {tuple(ref.shape)}")
    if pred.shape[0] == 0 or ref.shape[0] == 0:
        return 0.0, 0.0, 0.0
    p = torch.nn.functional.normalize(pred.detach().double(), dim=-1)
    r = torch.nn.functional.normalize(ref.detach().double(), dim=-1)
    sim = r @ p.T  # (n_ref, n_pred)
    recall = sim.max(dim=1).values.mean().item()
    precision = sim.max(dim=0).values.mean().item()
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def semantic_scores(predictions: list[str], references: list[list[str]], embed_fn: EmbedFn) -> dict[str, float]:
    """Mean precision/recall/F1 (percent); each distinct text is embedded once."""
    if embed_fn is None or not callable(embed_fn):
        raise ValueError("semantic_f1: embed_fn (texts -> list of (n_tokens, d) tensors) is required")
    if len(predictions) != len(references):
        raise ValueError(f"semantic_f1: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("semantic_f1: no predictions to score")
    if any(not refs for refs in references):
        raise ValueError("semantic_f1: every example needs at least one reference")
    texts = list(dict.fromkeys([*predictions, *(r for refs in references for r in refs)]))
    vectors = list(embed_fn(texts))
    if len(vectors) != len(texts):
        raise ValueError(f"semantic_f1: embed_fn returned {len(vectors)} tensors for {len(texts)} texts")
    table = dict(zip(texts, vectors))
    sums = [0.0, 0.0, 0.0]
    for pred, refs in zip(predictions, references):
        best = max((greedy_match(table[pred], table[ref]) for ref in refs), key=lambda prf: prf[2])
        for k in range(3):
            sums[k] += best[k]
    n = len(predictions)
    return {"semantic_precision": 100.0 * sums[0] / n, "semantic_recall": 100.0 * sums[1] / n,
            "semantic_f1": 100.0 * sums[2] / n}


class SemanticF1(evaluate.Metric):
    """BERTScore-style F1 over caller-supplied embeddings as an ``evaluate`` metric."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://arxiv.org/abs/1904.09675"],
        )

    def _compute(self, predictions: list[str], references: list[list[str]],
                 embed_fn: EmbedFn | None = None) -> dict[str, float]:
        return semantic_scores(list(predictions), [list(r) for r in references], embed_fn)
