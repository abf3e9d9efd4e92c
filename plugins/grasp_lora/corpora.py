"""Task data for GRASP LoRA: English source data and Arabic/Chinese target data, split by article.

Tasks: ``xquad`` (the shipped XQuAD subset, the offline default), ``mlqa`` and ``xlsum``; where
their files come from and how they are read is :mod:`.readers`.

Splits
------
Five splits: ``source_train`` (English) and ``target_train``, ``micro_dev``, ``dev``, ``test``
(target language). Sizes are numbers of examples (:class:`SplitSizes`); whole articles are
assigned to a split, never single questions. The target language's articles are shuffled with
``seed`` and handed out in the order test, dev, micro_dev, target_train, each split taking
articles until it reaches its size and then cutting its examples (in article order) to exactly
that size; the unused questions of the last article are dropped, not reused. English
``source_train`` is then filled the same way from the English articles that no target split
used: an English article is excluded when its key (title) or any of its question ids was used
by a target split, so parallel data (XQuAD, MLQA) never shows the model a target-split
article in English. Where the data has official splits (MLQA dev/test, XL-Sum
train/val/test), each of our splits prefers articles of the matching official split (test from
test; dev and micro_dev from dev/val; the train splits from train, then dev/val) and only then
falls back to the others, always disjoint by article.

Prompts and ``max_context_chars``
---------------------------------
QA prompts are ``"Context: {context}\\nQuestion: {question}\\nAnswer:"`` with target
``" " + first answer``; XL-Sum prompts are ``"Article: {text}\\nSummary:"`` with target
``" " + summary``. When a QA context is longer than ``max_context_chars`` characters, train
examples (``source_train``, ``target_train``) keep a window of that many characters centred on
the first answer span (so the answer is always inside), and evaluation examples
(``micro_dev``, ``dev``, ``test``, :func:`read_examples`) keep the first ``max_context_chars``
characters (the answer's position must not leak into evaluation inputs, so the answer may fall
outside the window). XL-Sum article texts are cut to their first ``max_context_chars``
characters in every split. ``None`` keeps texts whole.

Every problem with the data is a one-line :class:`~hpctl.errors.DataError`; unknown tasks,
languages or bad sizes are :class:`~hpctl.errors.ConfigError`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields
from pathlib import Path

from hpctl.errors import ConfigError, DataError
from hpctl.plugins.grasp_lora.readers import (
    ENV_VARS,
    HUB_IDS,
    LANG_NAMES,
    QA_TASKS,
    SQUAD_SHAPE,
    XLSUM_FIELDS,
    Article,
    JsonlFile,
    QARecord,
    Record,
    Unit,
    check_hub_dataset,
    hub_units,
    language_units,
    looks_like_hub_id,
    loads_json,
    parse_squad,
    read_text,
)

TASKS = ("xquad", "mlqa", "xlsum")
LANGS = ("ar", "zh")
SOURCE_LANG = "en"

SPLITS = ("source_train", "target_train", "micro_dev", "dev", "test")
TARGET_SPLIT_ORDER = ("test", "dev", "micro_dev", "target_train")
TRAIN_SPLITS = frozenset({"source_train", "target_train"})


_SHIPPED_XQUAD = Path(__file__).resolve().parent / "data" / "xquad"
# per split, the official-split tags (:mod:`.readers`) in order of preference
_PREFERENCE = {
    "test": ("test", "val", "train"),
    "dev": ("val", "train", "test"),
    "micro_dev": ("val", "train", "test"),
    "target_train": ("train", "val", "test"),
    "source_train": ("train", "val", "test"),
}


# --------------------------------------------------------------------------- public types


@dataclass
class Example:
    """One model input with its gold continuation.

    ``article`` is the grouping key used for splitting (article title, context hash or url); for
    parallel data it is the same across languages. ``prompt`` ends right before the answer;
    ``target`` is the trained continuation with a leading space; ``references`` are all gold
    answers (deduplicated, in file order) or ``[summary]``.
    """

    id: str
    article: str
    prompt: str
    target: str
    references: list[str]
    lang: str


@dataclass
class SplitSizes:
    """Requested numbers of examples per split (articles are assigned whole)."""

    source_train: int = 256
    target_train: int = 64
    micro_dev: int = 32
    dev: int = 64
    test: int = 128

    def validate(self) -> None:
        """Raise ConfigError unless every size is a non-negative integer."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"split size {f.name} must be a non-negative integer, got {value!r}")


@dataclass
class TaskData:
    """The five splits of one task and target language."""

    task: str
    source_lang: str
    target_lang: str
    source_train: list[Example]
    target_train: list[Example]
    micro_dev: list[Example]
    dev: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        """Number of examples per split, in :data:`SPLITS` order."""
        return {name: len(getattr(self, name)) for name in SPLITS}

    def articles(self) -> dict[str, int]:
        """Number of distinct articles per split: how many topics a split's examples span (a 48-question
        XQuAD split is one or two articles, since articles are assigned whole)."""
        return {name: len({e.article for e in getattr(self, name)}) for name in SPLITS}


# --------------------------------------------------------------------------- prompts


def format_qa_prompt(context: str, question: str) -> str:
    """The QA model input; the answer follows after ``"Answer:"`` (targets start with a space)."""
    return f"Context: {context}\nQuestion: {question}\nAnswer:"


def format_summary_prompt(text: str) -> str:
    """The summarisation model input; the summary follows after ``"Summary:"``."""
    return f"Article: {text}\nSummary:"


def _window(context: str, max_chars: int | None, answer: str, start: int | None, train: bool) -> str:
    """Cut ``context`` to ``max_chars`` characters (see the module docstring for the rule)."""
    if max_chars is None or len(context) <= max_chars:
        return context
    if train:
        if start is None or context[start:start + len(answer)] != answer:
            found = context.find(answer) if answer else -1
            start = found if found >= 0 else None
        if start is not None:
            end = start + len(answer)
            begin = start - (max_chars - (end - start)) // 2
            begin = max(0, min(begin, len(context) - max_chars))
            begin = min(begin, start)  # an answer longer than the window starts the window
            return context[begin:begin + max_chars].strip()
    return context[:max_chars].strip()


def _to_example(rec: Record, key: str, lang: str, train: bool, max_chars: int | None) -> Example:
    if isinstance(rec, QARecord):
        context = _window(rec.context, max_chars, rec.answers[0], rec.answer_start, train)
        return Example(id=rec.id, article=key, prompt=format_qa_prompt(context, rec.question),
                       target=" " + rec.answers[0], references=list(rec.answers), lang=lang)
    text = rec.text if max_chars is None else rec.text[:max_chars].strip()
    return Example(id=rec.id, article=key, prompt=format_summary_prompt(text),
                   target=" " + rec.summary, references=[rec.summary], lang=lang)


# --------------------------------------------------------------------------- validation


def check_task(task: str) -> None:
    """ConfigError unless ``task`` is one of :data:`TASKS`."""
    if task not in TASKS:
        raise ConfigError(f"unknown grasp_lora task {task!r} (choose from {', '.join(TASKS)})")


def check_lang(lang: str, allowed: tuple[str, ...] = LANGS, what: str = "target language") -> None:
    """ConfigError unless ``lang`` is in ``allowed`` (default: the target languages)."""
    if lang not in allowed:
        raise ConfigError(f"unknown {what} {lang!r} (choose from {', '.join(allowed)})")


def check_max_chars(max_chars: int | None) -> None:
    """ConfigError unless ``max_chars`` is None or a positive integer."""
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ConfigError(f"max_context_chars must be a positive integer or None, got {max_chars!r}")


# --------------------------------------------------------------------------- locating data


def default_data_dir(task: str) -> str | None:
    """The shipped folder for ``xquad``; ``$HPCTL_MLQA_DIR`` / ``$HPCTL_XLSUM_DIR`` or None otherwise
    (then :func:`load_task_data` loads the task's hub dataset, :data:`.readers.HUB_IDS`)."""
    check_task(task)
    if task == "xquad":
        return str(_SHIPPED_XQUAD)
    return os.environ.get(ENV_VARS[task]) or None


def check_data_source(task: str, lang: str, data_dir: str | None = None) -> None:
    """Fail fast when ``task``'s data comes from the hub and the hub cannot give it.

    For the hub datasets (no ``data_dir`` and no ``$HPCTL_*_DIR``, or a hub id as
    ``data_dir``): a one-line DataError within seconds, with no retries, when the hub is
    offline or unreachable and there is no cached copy (:func:`.readers.check_hub_dataset`).
    Local folders are checked when they are read.
    """
    check_task(task)
    if data_dir is None:
        data_dir = default_data_dir(task)
    if data_dir is None:
        hub_id = HUB_IDS[task]
    elif task != "xquad" and not Path(data_dir).expanduser().exists() and looks_like_hub_id(os.fspath(data_dir)):
        hub_id = os.fspath(data_dir)
    else:
        return
    for code in (lang, SOURCE_LANG):
        check_hub_dataset(task, hub_id, code)


# --------------------------------------------------------------------------- allocation


def _rank(tag: str | None, split: str) -> int:
    prefs = _PREFERENCE[split]
    if tag is None:
        return 0
    return prefs.index(tag) if tag in prefs else len(prefs)


class _Allocator:
    """Hands out whole articles of one language, in a seeded order, to splits."""

    def __init__(self, units: list[Unit], rng: random.Random, lang: str, requested: str) -> None:
        self.requested = requested
        self.units = units
        self.order = list(range(len(units)))
        rng.shuffle(self.order)
        self.consumed = [False] * len(units)
        self.lang = lang

    def take(self, split: str, size: int, used_keys: set[str], used_ids: set[str],
             task: str, max_chars: int | None) -> list[Example]:
        """Fill ``split`` with ``size`` examples; records keys/ids taken in ``used_keys``/``used_ids``."""
        if size == 0:
            return []
        ranked = sorted(self.order, key=lambda i: _rank(self.units[i].tag, split))
        picked: list[tuple[Article, Record]] = []
        for i in ranked:
            if self.consumed[i]:
                continue
            self.consumed[i] = True
            art = self.units[i].resolve()
            if art.key in used_keys or (art.link_ids & used_ids):
                continue  # a target-split article (or its translation): never reused
            used_keys.add(art.key)
            used_ids |= art.link_ids
            picked += [(art, rec) for rec in art.records]
            if len(picked) >= size:
                break
        if len(picked) < size:
            excluded = " or shared with a target split" if self.lang == SOURCE_LANG else ""
            raise DataError(f"{task}: too few articles for the requested sizes ({self.requested}): "
                            f"{split} got only {len(picked)} of {size} examples from the "
                            f"{LANG_NAMES[self.lang]} articles not already used{excluded} "
                            f"({len(self.units)} articles in all, assigned whole); "
                            "request smaller split sizes or use more data")
        train = split in TRAIN_SPLITS
        return [_to_example(rec, art.key, self.lang, train, max_chars) for art, rec in picked[:size]]


def load_task_data(task: str, lang: str, *, data_dir: str | None = None, seed: int = 0,
                   sizes: SplitSizes | None = None, max_context_chars: int | None = 1200) -> TaskData:
    """Load ``task`` with English source data and ``lang`` target data, split by article.

    ``data_dir`` defaults to :func:`default_data_dir`; see the module docstring for file names,
    split rules and the ``max_context_chars`` window. Raises ConfigError for an unknown task or
    language or bad sizes, DataError for any problem with the data.
    """
    check_task(task)
    check_lang(lang)
    check_max_chars(max_context_chars)
    sizes = sizes if sizes is not None else SplitSizes()
    sizes.validate()
    if data_dir is None:
        data_dir = default_data_dir(task)
    if data_dir is None:  # mlqa / xlsum with no folder given: their hub datasets (one-line error offline)
        target_units = hub_units(task, HUB_IDS[task], lang)
        source_units = hub_units(task, HUB_IDS[task], SOURCE_LANG)
    else:
        data_dir = os.fspath(data_dir)
        target_units = language_units(task, data_dir, lang)
        source_units = language_units(task, data_dir, SOURCE_LANG)

    rng = random.Random(seed)
    requested = ", ".join(f"{name}={getattr(sizes, name)}" for name in SPLITS)
    target = _Allocator(target_units, rng, lang, requested)
    source = _Allocator(source_units, rng, SOURCE_LANG, requested)
    used_keys: set[str] = set()
    used_ids: set[str] = set()
    splits: dict[str, list[Example]] = {}
    for split in TARGET_SPLIT_ORDER:
        splits[split] = target.take(split, getattr(sizes, split), used_keys, used_ids, task, max_context_chars)
    # English articles whose key or question ids a target split used are skipped by take().
    splits["source_train"] = source.take("source_train", sizes.source_train, used_keys, used_ids, task,
                                         max_context_chars)
    return TaskData(task=task, source_lang=SOURCE_LANG, target_lang=lang, **splits)


def read_examples(task: str, path: str, lang: str, *, max_context_chars: int | None = 1200) -> list[Example]:
    """All examples of one file (SQuAD JSON for QA tasks, XL-Sum JSON lines for xlsum), in file order.

    Built like evaluation examples (the context window starts at the beginning). ``lang`` may also
    be ``"en"``. Used by ``hpctl eval --data FILE``.
    """
    check_task(task)
    check_lang(lang, (SOURCE_LANG, *LANGS), "language")
    check_max_chars(max_context_chars)
    file = Path(os.fspath(path)).expanduser()
    fmt = SQUAD_SHAPE if task in QA_TASKS else XLSUM_FIELDS
    if not file.exists():
        raise DataError(f"{task}: data file not found: {file}; expected {fmt}")
    if not file.is_file():
        raise DataError(f"{task}: {file} is not a file; expected one file with {fmt}")
    if task in QA_TASKS:
        articles = parse_squad(loads_json(read_text(file), str(file)), str(file), None, file.stem)
        return [_to_example(rec, art.key, lang, False, max_context_chars) for art in articles for rec in art.records]
    return [_to_example(rec, key, lang, False, max_context_chars) for key, rec in JsonlFile(file, None).records()]
