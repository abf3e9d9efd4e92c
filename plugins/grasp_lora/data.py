"""Task data for GRASP LoRA: English source data and Arabic/Chinese target data, split by article.

Tasks
-----
``xquad``
    The shipped XQuAD subset (``data/xquad/xquad.{en,ar,zh}.json``, SQuAD JSON, 36 articles and
    925 questions, parallel across languages: article *i* is the same in every language and
    carries the same title and question ids). The offline default.
``mlqa``
    MLQA (SQuAD JSON). ``data_dir`` is a local copy of ``MLQA_V1`` (a directory, or the
    ``MLQA_V1.zip`` archive itself) holding MLQA's own file names
    ``{dev,test}-context-{lang}-question-{lang}.json`` directly in the directory or in any
    subdirectory (``MLQA_V1/dev/``, ``MLQA_V1/test/``); the English source data comes from
    ``*-context-en-question-en.json``, the target data from ``*-context-ar-question-ar.json`` or
    ``*-context-zh-question-zh.json``. Default: ``$HPCTL_MLQA_DIR``. A hub id such as
    ``facebook/mlqa`` (configs ``mlqa.{lang}.{lang}``) is tried when ``data_dir`` is not an
    existing path and looks like ``owner/name``.
``xlsum``
    XL-Sum (JSON lines: ``id``, ``url``, ``title``, ``summary``, ``text`` per line). ``data_dir``
    holds XL-Sum's own file names ``{name}_{split}.jsonl`` (``name`` = ``english``, ``arabic``,
    ``chinese_simplified``; ``split`` = ``train``, ``val``, ``test`` and also ``validation`` or
    ``dev``), or the short forms ``{lang}_{split}.jsonl`` (``en_train.jsonl``, ``ar_test.jsonl``,
    ``zh_val.jsonl``), or a whole language in one ``{name}.jsonl`` / ``{lang}.jsonl``; files are
    found in the directory or any subdirectory. Default: ``$HPCTL_XLSUM_DIR``; hub id
    ``csebuetnlp/xlsum`` (configs ``english``, ``arabic``, ``chinese_simplified``).

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
falls back to the others, always disjoint by article. XL-Sum articles are keyed by ``url``
(``id`` when a record has no url); QA articles by title (a file-specific key when a title is
missing; a hash of the context for hub rows, which carry no title).

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

Local files are read with the standard ``json`` module (fast, precise error positions); hub ids
go through ``datasets.load_dataset``. XL-Sum files are large (English train: 300k lines), so
their lines are indexed up front and parsed only when a split draws them: a malformed line is
reported when it is drawn, and two lines with the same url are never used twice. Every
problem with the data is a one-line :class:`~hpctl.errors.DataError`; unknown tasks,
languages or bad sizes are :class:`~hpctl.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from hpctl.errors import ConfigError, DataError

TASKS = ("xquad", "mlqa", "xlsum")
LANGS = ("ar", "zh")
QA_TASKS = ("xquad", "mlqa")
SOURCE_LANG = "en"

SPLITS = ("source_train", "target_train", "micro_dev", "dev", "test")
TARGET_SPLIT_ORDER = ("test", "dev", "micro_dev", "target_train")
TRAIN_SPLITS = frozenset({"source_train", "target_train"})

ENV_VARS = {"mlqa": "HPCTL_MLQA_DIR", "xlsum": "HPCTL_XLSUM_DIR"}
HUB_IDS = {"mlqa": "facebook/mlqa", "xlsum": "csebuetnlp/xlsum"}
XLSUM_NAMES = {"en": "english", "ar": "arabic", "zh": "chinese_simplified"}
LANG_NAMES = {"en": "English", "ar": "Arabic", "zh": "Chinese"}

_SHIPPED_XQUAD = Path(__file__).resolve().parent / "data" / "xquad"
# Official split of a file -> tag; tags rank articles per split (earlier = preferred).
_SPLIT_TAGS = {"train": "train", "dev": "val", "val": "val", "validation": "val", "test": "test"}
_PREFERENCE = {
    "test": ("test", "val", "train"),
    "dev": ("val", "train", "test"),
    "micro_dev": ("val", "train", "test"),
    "target_train": ("train", "val", "test"),
    "source_train": ("train", "val", "test"),
}
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SQUAD_SHAPE = ('SQuAD JSON {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", '
                '"answers": [{"text", "answer_start"}]}]}]}]}')
_XLSUM_FIELDS = "one JSON object per line with 'id', 'url', 'title', 'summary' and 'text' ('url' and 'title' may be missing)"


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


# --------------------------------------------------------------------------- raw records


@dataclass
class _QARecord:
    id: str
    question: str
    context: str
    answers: list[str]
    answer_start: int | None


@dataclass
class _SumRecord:
    id: str
    text: str
    summary: str


_Record = _QARecord | _SumRecord


@dataclass
class _Article:
    """All records sharing one grouping key, with the ids that link it to other languages."""

    key: str
    records: list[_Record]
    tag: str | None
    link_ids: set[str]


@dataclass
class _Unit:
    """One shuffle unit: an article, or a lazily parsed line/row that becomes one."""

    tag: str | None
    resolve: Callable[[], _Article]


def _to_example(rec: _Record, key: str, lang: str, train: bool, max_chars: int | None) -> Example:
    if isinstance(rec, _QARecord):
        context = _window(rec.context, max_chars, rec.answers[0], rec.answer_start, train)
        return Example(id=rec.id, article=key, prompt=format_qa_prompt(context, rec.question),
                       target=" " + rec.answers[0], references=list(rec.answers), lang=lang)
    text = rec.text if max_chars is None else rec.text[:max_chars].strip()
    return Example(id=rec.id, article=key, prompt=format_summary_prompt(text),
                   target=" " + rec.summary, references=[rec.summary], lang=lang)


# --------------------------------------------------------------------------- validation helpers


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown grasp_lora task {task!r} (choose from {', '.join(TASKS)})")


def _check_lang(lang: str, allowed: tuple[str, ...] = LANGS, what: str = "target language") -> None:
    if lang not in allowed:
        raise ConfigError(f"unknown {what} {lang!r} (choose from {', '.join(allowed)})")


def _check_max_chars(max_chars: int | None) -> None:
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ConfigError(f"max_context_chars must be a positive integer or None, got {max_chars!r}")


def _loads_json(text: str, where: str) -> Any:
    if not text.strip():
        raise DataError(f"{where}: file is empty; expected {_SQUAD_SHAPE}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                        f"expected {_SQUAD_SHAPE}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({_one_line(exc)})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_one_line(exc.strerror or exc)})") from None


# --------------------------------------------------------------------------- SQuAD JSON


def _need(obj: Any, name: str, kind: type, where: str, path: str, hint: str) -> Any:
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise DataError(f"{where}: record {path} has no usable {name!r} field; {hint}")
    return value


def _parse_squad(obj: Any, where: str, tag: str | None, fallback_key: str) -> list[_Article]:
    """SQuAD JSON -> articles keyed by title. Unanswerable questions (no answers) are skipped."""
    hint = f"expected {_SQUAD_SHAPE}"
    if not isinstance(obj, dict) or "data" not in obj:
        raise DataError(f"{where}: missing the top-level 'data' field; {hint}")
    data = _need(obj, "data", list, where, "(top level)", hint)
    articles: list[_Article] = []
    for i, art in enumerate(data):
        paragraphs = _need(art, "paragraphs", list, where, f"data[{i}]", hint)
        title = art.get("title")
        key = title.strip() if isinstance(title, str) and title.strip() else f"{fallback_key}#{i}"
        records: list[_Record] = []
        for j, par in enumerate(paragraphs):
            loc = f"data[{i}].paragraphs[{j}]"
            context = _need(par, "context", str, where, loc, hint)
            qas = _need(par, "qas", list, where, loc, hint)
            for k, qa in enumerate(qas):
                qloc = f"{loc}.qas[{k}]"
                qid = qa.get("id") if isinstance(qa, dict) else None
                if isinstance(qid, int) and not isinstance(qid, bool):
                    qid = str(qid)
                if not isinstance(qid, str) or not qid:
                    raise DataError(f"{where}: record {qloc} has no usable 'id' field; {hint}")
                question = _need(qa, "question", str, where, qloc, hint)
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    raise DataError(f"{where}: record {qloc} has no usable 'answers' field; {hint}")
                texts: list[str] = []
                start: int | None = None
                for a, ans in enumerate(answers):
                    text = ans.get("text") if isinstance(ans, dict) else None
                    if not isinstance(text, str):
                        raise DataError(f"{where}: record {qloc}.answers[{a}] has no usable 'text' field; {hint}")
                    text = text.strip()
                    if not text:
                        continue
                    if not texts:
                        raw = ans.get("answer_start")
                        start = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
                        if start is not None and context[start:start + len(text)] != text:
                            # answer_start counts the unstripped answer text
                            found = context.find(text, max(0, start - 2))
                            start = found if found >= 0 else None
                    if text not in texts:
                        texts.append(text)
                if texts:
                    records.append(_QARecord(id=qid, question=question.strip(), context=context,
                                             answers=texts, answer_start=start))
        if records:
            articles.append(_Article(key=key, records=records, tag=tag, link_ids={r.id for r in records}))
    if not any(a.records for a in articles):
        raise DataError(f"{where}: contains no answerable questions; {hint}")
    return articles


def _merge(articles: list[_Article]) -> list[_Article]:
    """Merge articles sharing a key (e.g. the same title in two files); first one's tag wins."""
    merged: dict[str, _Article] = {}
    for art in articles:
        if art.key in merged:
            merged[art.key].records.extend(art.records)
            merged[art.key].link_ids |= art.link_ids
        else:
            merged[art.key] = _Article(art.key, list(art.records), art.tag, set(art.link_ids))
    return list(merged.values())


# --------------------------------------------------------------------------- XL-Sum JSON lines


def _parse_xlsum_record(obj: Any, where: str) -> tuple[str, _SumRecord]:
    """One XL-Sum line -> (grouping key, record)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a JSON object; expected {_XLSUM_FIELDS}")
    rid = obj.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    for name, value in (("id", rid), ("summary", obj.get("summary")), ("text", obj.get("text"))):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: record has no usable {name!r} field; expected {_XLSUM_FIELDS}")
    url = obj.get("url")
    key = url.strip() if isinstance(url, str) and url.strip() else rid
    return key, _SumRecord(id=rid, text=obj["text"].strip(), summary=obj["summary"].strip())


class _JsonlFile:
    """A JSON-lines file indexed by line offsets, parsed one line at a time on demand."""

    def __init__(self, path: Path, tag: str | None) -> None:
        self.path = path
        self.tag = tag
        self.offsets: list[int] = []
        self.linenos: list[int] = []
        try:
            with path.open("rb") as fh:
                pos = 0
                for lineno, line in enumerate(fh, start=1):
                    if line.strip():
                        self.offsets.append(pos)
                        self.linenos.append(lineno)
                    pos += len(line)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({_one_line(exc.strerror or exc)})") from None
        if not self.offsets:
            raise DataError(f"{path}: file is empty; expected {_XLSUM_FIELDS}")

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, i: int) -> tuple[str, _SumRecord]:
        """Parse line ``i`` (0-based among non-blank lines)."""
        with self.path.open("rb") as fh:
            fh.seek(self.offsets[i])
            raw = fh.readline()
        return self._parse(raw, self.linenos[i])

    def records(self) -> list[tuple[str, _SumRecord]]:
        """All lines in file order (one sequential read)."""
        with self.path.open("rb") as fh:
            lines = fh.readlines()
        return [self._parse(lines[n - 1], n) for n in self.linenos]

    def _parse(self, raw: bytes, lineno: int) -> tuple[str, _SumRecord]:
        where = f"{self.path}:{lineno}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{where}: not UTF-8 text; expected {_XLSUM_FIELDS}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); expected {_XLSUM_FIELDS}") from None
        return _parse_xlsum_record(obj, where)

    def units(self) -> list[_Unit]:
        """One lazy unit per line."""
        def make(i: int) -> Callable[[], _Article]:
            def resolve() -> _Article:
                key, rec = self.record(i)
                return _Article(key=key, records=[rec], tag=self.tag, link_ids={rec.id})
            return resolve
        return [_Unit(self.tag, make(i)) for i in range(len(self))]


# --------------------------------------------------------------------------- locating data


def default_data_dir(task: str) -> str | None:
    """The shipped folder for ``xquad``; ``$HPCTL_MLQA_DIR`` / ``$HPCTL_XLSUM_DIR`` or None otherwise."""
    _check_task(task)
    if task == "xquad":
        return str(_SHIPPED_XQUAD)
    return os.environ.get(ENV_VARS[task]) or None


def _expected_files(task: str, lang: str) -> str:
    if task == "xquad":
        return f"xquad.{lang}.json"
    if task == "mlqa":
        return (f"dev-context-{lang}-question-{lang}.json and/or test-context-{lang}-question-{lang}.json "
                "(MLQA_V1 names, in the directory or a subdirectory such as dev/ or test/)")
    name = XLSUM_NAMES[lang]
    return (f"{name}_train.jsonl, {name}_val.jsonl, {name}_test.jsonl (or {lang}_{{train,val,test}}.jsonl, "
            f"or one {name}.jsonl; XL-Sum names, in the directory or a subdirectory)")


def _how_to_point(task: str) -> str:
    if task == "xquad":
        return "pass the directory holding the XQuAD files as data_dir"
    return f"pass a local directory as data_dir or set {ENV_VARS[task]}"


def _qa_files_in_dir(task: str, root: Path, lang: str) -> list[tuple[Path, str | None]]:
    if task == "xquad":
        path = root / f"xquad.{lang}.json"
        return [(path, None)] if path.is_file() else []
    pattern = re.compile(rf"(?:(train|dev|test)-)?context-{lang}-question-{lang}\.json")
    found = []
    for path in sorted(root.rglob(f"*context-{lang}-question-{lang}.json")):
        m = pattern.fullmatch(path.name)
        if m and path.is_file():
            found.append((path, _SPLIT_TAGS.get(m.group(1) or "", None)))
    return found


def _xlsum_files_in_dir(root: Path, lang: str) -> list[tuple[Path, str | None]]:
    names = {XLSUM_NAMES[lang], lang}
    wanted: dict[str, str | None] = {f"{n}.jsonl": None for n in names}
    for n in names:
        for split, tag in _SPLIT_TAGS.items():
            wanted[f"{n}_{split}.jsonl"] = tag
    return [(p, wanted[p.name]) for p in sorted(root.rglob("*.jsonl")) if p.name in wanted and p.is_file()]


def _load_qa_local(task: str, root: Path, lang: str) -> list[_Article]:
    """Articles of one language from a directory (or, for mlqa, an MLQA_V1.zip archive)."""
    articles: list[_Article] = []
    if root.is_file():
        if task != "mlqa" or not zipfile.is_zipfile(root):
            raise DataError(f"{task}: data_dir {root} is a file, not a directory; expected a directory holding "
                            f"{_expected_files(task, lang)} "
                            "(for one data file use read_examples / `hpctl eval --data FILE`)")
        pattern = re.compile(rf"(?:.*/)?(?:(train|dev|test)-)?context-{lang}-question-{lang}\.json")
        with zipfile.ZipFile(root) as zf:
            members = sorted(n for n in zf.namelist() if pattern.fullmatch(n))
            for name in members:
                m = pattern.fullmatch(name)
                where = f"{root}!{name}"
                try:
                    text = zf.read(name).decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{where}: not UTF-8 text") from None
                tag = _SPLIT_TAGS.get((m.group(1) if m else "") or "", None)
                articles += _parse_squad(_loads_json(text, where), where, tag, f"{Path(name).stem}")
        if not members:
            raise DataError(f"{task}: no {LANG_NAMES.get(lang, lang)} file in the archive {root}; expected "
                            f"{_expected_files(task, lang)}")
        return _merge(articles)
    files = _qa_files_in_dir(task, root, lang)
    if not files:
        raise DataError(f"{task}: no {LANG_NAMES.get(lang, lang)} file in {root}; expected {_expected_files(task, lang)}")
    for path, tag in files:
        articles += _parse_squad(_loads_json(_read_text(path), str(path)), str(path), tag, path.stem)
    return _merge(articles)


def _looks_like_hub_id(data_dir: str) -> bool:
    return (not os.path.isabs(data_dir) and not data_dir.startswith((".", "~"))
            and _HUB_ID_RE.fullmatch(data_dir) is not None)


def _hub_dataset(task: str, hub_id: str, config: str) -> Any:
    try:
        import datasets  # imported lazily: slow, and only hub ids need it

        return datasets.load_dataset(hub_id, config)
    except Exception as exc:  # noqa: BLE001 - any hub failure is a data problem for the user
        raise DataError(f"{task}: {hub_id!r} is not a local directory and could not be loaded from the Hugging Face hub "
                        f"(config {config!r}; the hub is not reachable offline: {_one_line(exc)[:300]}); "
                        f"{_how_to_point(task)}") from None


def _hub_units(task: str, hub_id: str, lang: str) -> list[_Unit]:
    """Units from a hub dataset (only when the hub is reachable)."""
    config = f"mlqa.{lang}.{lang}" if task == "mlqa" else XLSUM_NAMES[lang]
    dsd = _hub_dataset(task, hub_id, config)
    units: list[_Unit] = []
    for split in sorted(dsd.keys()):
        ds = dsd[split]
        tag = _SPLIT_TAGS.get(split)
        where = f"{hub_id}[{config}][{split}]"
        if task == "mlqa":
            articles: list[_Article] = []
            for row in ds:
                answers = row.get("answers") or {}
                squad = {"data": [{"title": row.get("title") or "", "paragraphs": [{
                    "context": row.get("context"),
                    "qas": [{"id": row.get("id"), "question": row.get("question"),
                             "answers": [{"text": t, "answer_start": s} for t, s in
                                         zip(answers.get("text", []), answers.get("answer_start", []))]}]}]}]}
                ctx = row.get("context") if isinstance(row.get("context"), str) else ""
                # hub rows carry no title: group by context (key "ctx-<hash>#0")
                fallback = "ctx-" + hashlib.sha1(ctx.encode("utf-8")).hexdigest()[:16]
                articles += _parse_squad(squad, f"{where} row {len(articles)}", tag, fallback)
            units += [_Unit(a.tag, (lambda a=a: a)) for a in _merge(articles)]
        else:
            def make(i: int, ds: Any = ds, tag: str | None = tag, where: str = where) -> Callable[[], _Article]:
                def resolve() -> _Article:
                    key, rec = _parse_xlsum_record(ds[i], f"{where} row {i}")
                    return _Article(key=key, records=[rec], tag=tag, link_ids={rec.id})
                return resolve
            units += [_Unit(tag, make(i)) for i in range(len(ds))]
    if not units:
        raise DataError(f"{task}: the hub dataset {hub_id!r} (config {config!r}) has no rows; {_how_to_point(task)}")
    return units


def _language_units(task: str, data_dir: str, lang: str) -> list[_Unit]:
    """Shuffle units for one language of one task."""
    root = Path(data_dir).expanduser()
    if not root.exists():
        if task != "xquad" and _looks_like_hub_id(data_dir):
            return _hub_units(task, data_dir, lang)
        raise DataError(f"{task}: data directory not found: {root}; expected a directory holding "
                        f"{_expected_files(task, lang)}; {_how_to_point(task)}")
    if task in QA_TASKS:
        return [_Unit(a.tag, (lambda a=a: a)) for a in _load_qa_local(task, root, lang)]
    if root.is_file():
        raise DataError(f"xlsum: data_dir {root} is a file, not a directory; expected a directory holding "
                        f"{_expected_files(task, lang)} (for one data file use read_examples / `hpctl eval --data FILE`)")
    files = _xlsum_files_in_dir(root, lang)
    if not files:
        raise DataError(f"xlsum: no {LANG_NAMES[lang]} file in {root}; expected {_expected_files(task, lang)}")
    units: list[_Unit] = []
    for path, tag in files:
        units += _JsonlFile(path, tag).units()
    return units


# --------------------------------------------------------------------------- allocation


def _rank(tag: str | None, split: str) -> int:
    prefs = _PREFERENCE[split]
    if tag is None:
        return 0
    return prefs.index(tag) if tag in prefs else len(prefs)


class _Allocator:
    """Hands out whole articles of one language, in a seeded order, to splits."""

    def __init__(self, units: list[_Unit], rng: random.Random, lang: str, requested: str) -> None:
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
        picked: list[tuple[_Article, _Record]] = []
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
    _check_task(task)
    _check_lang(lang)
    _check_max_chars(max_context_chars)
    sizes = sizes if sizes is not None else SplitSizes()
    sizes.validate()
    if data_dir is None:
        data_dir = default_data_dir(task)
    if data_dir is None:
        raise DataError(f"{task}: no data directory given and {ENV_VARS[task]} is not set; expected a directory holding "
                        f"{_expected_files(task, lang)}; {_how_to_point(task)} (hub id {HUB_IDS[task]!r} only when online)")
    data_dir = os.fspath(data_dir)
    target_units = _language_units(task, data_dir, lang)
    source_units = _language_units(task, data_dir, SOURCE_LANG)

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
    _check_task(task)
    _check_lang(lang, (SOURCE_LANG, *LANGS), "language")
    _check_max_chars(max_context_chars)
    file = Path(os.fspath(path)).expanduser()
    fmt = _SQUAD_SHAPE if task in QA_TASKS else _XLSUM_FIELDS
    if not file.exists():
        raise DataError(f"{task}: data file not found: {file}; expected {fmt}")
    if not file.is_file():
        raise DataError(f"{task}: {file} is not a file; expected one file with {fmt}")
    if task in QA_TASKS:
        articles = _parse_squad(_loads_json(_read_text(file), str(file)), str(file), None, file.stem)
        return [_to_example(rec, art.key, lang, False, max_context_chars) for art in articles for rec in art.records]
    return [_to_example(rec, key, lang, False, max_context_chars) for key, rec in _JsonlFile(file, None).records()]
