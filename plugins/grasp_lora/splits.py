"""A data split tokenised for the model, and how it is scored (also by ``hpctl eval``).

:func:`encode_split` builds the teacher-forcing encodings, their fixed evaluation batches and
the generation prompts of a list of :class:`.corpora.Example`; :func:`split_metrics` scores
greedy generations with :func:`.metrics.compute_metrics`, plus the mean answer loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from hpctl.plugins.grasp_lora.lm import (
    Batch,
    Encoded,
    PassCounter,
    batched_loss,
    collate,
    encode_example,
    encode_prompt,
    greedy_generate,
    length_batches,
)

#: the splits the task encodes (and :meth:`.task.GraspTask.evaluate` accepts)
EVAL_SPLITS = ("micro_dev", "dev", "test", "target_train", "source_train")


@dataclass
class Split:
    """One data split, tokenised for teacher forcing and for generation."""

    encoded: list[Encoded]
    prompts: list[list[int]]
    references: list[list[str]]
    ids: list[str]
    batches: list[Batch]


def primary_metric(task: str) -> str:
    """The metric a split's ``score`` is: F1 for the QA tasks, ROUGE-L for xlsum."""
    return "rougeL" if task == "xlsum" else "f1"


def encode_split(tokenizer, examples: Sequence[Any], cfg: Any, pad_id: int) -> Split:
    """Tokenise ``examples`` as the task and ``hpctl eval`` score them.

    Teacher-forcing encodings (``max_len``/``max_target_len``) and their fixed evaluation
    batches (``eval_batch_size``, by length), generation prompts (``max_len - max_new_tokens``),
    references and ids. ``cfg`` is a resolved config.
    """
    enc = [encode_example(tokenizer, e.prompt, e.target, max_len=int(cfg.max_len),
                          max_target_len=int(cfg.max_target_len)) for e in examples]
    prompts = [encode_prompt(tokenizer, e.prompt, int(cfg.max_len) - int(cfg.max_new_tokens)) for e in examples]
    batches = [collate([enc[i] for i in idx], pad_id)
               for idx in length_batches([len(e.ids) for e in enc], int(cfg.eval_batch_size))] if enc else []
    return Split(enc, prompts, [list(e.references) for e in examples], [e.id for e in examples], batches)


#: ``(name, embed_fn)``: the encoder of the semantic F1 (``embed_fn(texts)`` -> one ``(n_tokens, d)`` tensor each)
Encoder = tuple[str, Callable[[list[str]], Sequence[Any]]]
#: ``progress(stage, done, total)`` after every batch; stages ``"generate"`` and ``"loss"``
Progress = Callable[[str, int, int], None]


def split_metrics(model: Any, tokenizer, split: Split, cfg: Any, lang: str,
                  counter: PassCounter | None = None, *, encoder: Encoder | None = None,
                  progress: Progress | None = None) -> tuple[dict[str, float], list[str]]:
    """Greedy generations on ``split`` scored by :func:`.metrics.compute_metrics`, plus the mean ``loss``.

    Returns ``(scores, predictions)``; the model runs as it is (masks, wrappers) on its device.
    ``encoder`` (xlsum): the semantic F1 is computed with it and named by it
    (:func:`.metrics.describe_metrics`); QA tasks ignore it.
    """
    from hpctl.plugins.grasp_lora.metrics import compute_metrics

    n = len(split.prompts)

    def reporter(stage: str):
        if progress is None:
            return None
        done = [0]
        progress(stage, 0, n)  # the stage starts

        def on_batch(k: int) -> None:
            done[0] += k
            progress(stage, done[0], n)

        return on_batch

    preds = greedy_generate(model, tokenizer, split.prompts, max_new_tokens=int(cfg.max_new_tokens),
                            batch_size=int(cfg.eval_batch_size), counter=counter, on_batch=reporter("generate"))
    name, embed_fn = encoder if encoder is not None and cfg.task == "xlsum" else (None, None)
    scores = compute_metrics(cfg.task, lang, preds, split.references, embed_fn=embed_fn, encoder_name=name)
    scores["loss"] = batched_loss(model, split.batches, counter, on_batch=reporter("loss"))
    return scores, preds
