"""Where GRASP LoRA's task data comes from: file formats, file discovery, the hub.

:mod:`.corpora` splits what this module reads into articles and examples; this module turns a
``data_dir`` (or a hub id) into *shuffle units* of raw records, one unit per article.

Tasks and the files they read
-----------------------------
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
    ``*-context-zh-question-zh.json``. Default: ``$HPCTL_MLQA_DIR``, else the hub dataset
    ``facebook/mlqa`` (configs ``mlqa.{lang}.{lang}``; rows ``id``, ``context``, ``question``,
    ``answers: {text: [...], answer_start: [...]}``, splits ``validation`` and ``test``). A hub
    id is also tried when ``data_dir`` is not an existing path and looks like ``owner/name``.
``xlsum``
    XL-Sum (JSON lines: ``id``, ``url``, ``title``, ``summary``, ``text`` per line). ``data_dir``
    holds XL-Sum's own file names ``{name}_{split}.jsonl`` (``name`` = ``english``, ``arabic``,
    ``chinese_simplified``; ``split`` = ``train``, ``val``, ``test`` and also ``validation`` or
    ``dev``), or the short forms ``{lang}_{split}.jsonl`` (``en_train.jsonl``, ``ar_test.jsonl``,
    ``zh_val.jsonl``), or a whole language in one ``{name}.jsonl`` / ``{lang}.jsonl``; files are
    found in the directory or any subdirectory. Default: ``$HPCTL_XLSUM_DIR``, else the hub
    dataset ``csebuetnlp/xlsum`` (configs ``english``, ``arabic``, ``chinese_simplified``; rows
    ``id``, ``url``, ``title``, ``summary``, ``text``; splits ``train``, ``validation``, ``test``).

Hub datasets load through ``datasets.load_dataset`` and are cached like any Hugging Face
dataset; a repository that still has a loading script (refused by ``datasets`` 4+) is read
from the hub's Parquet export. Unless ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` already
say so, one HEAD request to the hub's endpoint (``HF_ENDPOINT``, default
https://huggingface.co; proxies as the environment sets them) with a
:data:`HUB_PROBE_TIMEOUT_S` limit first checks that the hub answers; when it does not,
``datasets`` is told to stay offline for that load, so a cached copy still loads and
nothing retries (``huggingface_hub`` otherwise retries five times over about 30 s, logging
every try). Offline or unreachable without a cached copy is a one-line DataError saying how
to point at local files; the libraries' loggers and warnings are silenced during the load.

XL-Sum articles are keyed by ``url`` (``id`` when a record has no url); QA articles by title (a
file-specific key when a title is missing; a hash of the context for hub rows, which carry no
title). A file's official split (MLQA dev/test, XL-Sum train/val/test) becomes its units' tag.

Local files are read with the standard ``json`` module (fast, precise error positions); hub ids
go through ``datasets.load_dataset``. XL-Sum files are large (English train: 300k lines), so
their lines are indexed up front and parsed only when a split draws them: a malformed line is
reported when it is drawn. Every problem with the data is a one-line
:class:`~hpctl.errors.DataError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from hpctl.errors import DataError

QA_TASKS = ("xquad", "mlqa")
ENV_VARS = {"mlqa": "HPCTL_MLQA_DIR", "xlsum": "HPCTL_XLSUM_DIR"}
XLSUM_NAMES = {"en": "english", "ar": "arabic", "zh": "chinese_simplified"}
LANG_NAMES = {"en": "English", "ar": "Arabic", "zh": "Chinese"}
SQUAD_SHAPE = ('SQuAD JSON {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", '
               '"answers": [{"text", "answer_start"}]}]}]}]}')
XLSUM_FIELDS = "one JSON object per line with 'id', 'url', 'title', 'summary' and 'text' ('url' and 'title' may be missing)"

# Official split of a file -> tag; tags rank articles per split (earlier = preferred).
_SPLIT_TAGS = {"train": "train", "dev": "val", "val": "val", "validation": "val", "test": "test"}
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: the hub datasets of the tasks that have one (used when no data folder is given)
HUB_IDS = {"mlqa": "facebook/mlqa", "xlsum": "csebuetnlp/xlsum"}
#: the hub's automatic Parquet export of a dataset repository
PARQUET_EXPORT = "refs/convert/parquet"
#: seconds the hub's endpoint has to answer before a hub dataset is loaded from the cache only
HUB_PROBE_TIMEOUT_S = 2.0


# --------------------------------------------------------------------------- raw records


@dataclass
class QARecord:
    """One answerable question; ``answers`` deduplicated in file order, ``answer_start`` of the first."""

    id: str
    question: str
    context: str
    answers: list[str]
    answer_start: int | None


@dataclass
class SumRecord:
    """One XL-Sum article with its summary."""

    id: str
    text: str
    summary: str


Record = QARecord | SumRecord


@dataclass
class Article:
    """All records sharing one grouping key, with the ids that link it to other languages."""

    key: str
    records: list[Record]
    tag: str | None
    link_ids: set[str]


@dataclass
class Unit:
    """One shuffle unit: an article, or a lazily parsed line/row that becomes one."""

    tag: str | None
    resolve: Callable[[], Article]


# --------------------------------------------------------------------------- reading files


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def loads_json(text: str, where: str) -> Any:
    """Parsed SQuAD-style JSON ``text`` (read from ``where``); DataError if empty or not JSON."""
    if not text.strip():
        raise DataError(f"{where}: file is empty; expected {SQUAD_SHAPE}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                        f"expected {SQUAD_SHAPE}") from None


def read_text(path: Path) -> str:
    """``path`` as UTF-8 text; DataError if it cannot be read or decoded."""
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


def parse_squad(obj: Any, where: str, tag: str | None, fallback_key: str) -> list[Article]:
    """SQuAD JSON -> articles keyed by title. Unanswerable questions (no answers) are skipped."""
    hint = f"expected {SQUAD_SHAPE}"
    if not isinstance(obj, dict) or "data" not in obj:
        raise DataError(f"{where}: missing the top-level 'data' field; {hint}")
    data = _need(obj, "data", list, where, "(top level)", hint)
    articles: list[Article] = []
    for i, art in enumerate(data):
        paragraphs = _need(art, "paragraphs", list, where, f"data[{i}]", hint)
        title = art.get("title")
        key = title.strip() if isinstance(title, str) and title.strip() else f"{fallback_key}#{i}"
        records: list[Record] = []
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
                    records.append(QARecord(id=qid, question=question.strip(), context=context,
                                             answers=texts, answer_start=start))
        if records:
            articles.append(Article(key=key, records=records, tag=tag, link_ids={r.id for r in records}))
    if not any(a.records for a in articles):
        raise DataError(f"{where}: contains no answerable questions; {hint}")
    return articles


def _merge(articles: list[Article]) -> list[Article]:
    """Merge articles sharing a key (e.g. the same title in two files); first one's tag wins."""
    merged: dict[str, Article] = {}
    for art in articles:
        if art.key in merged:
            merged[art.key].records.extend(art.records)
            merged[art.key].link_ids |= art.link_ids
        else:
            merged[art.key] = Article(art.key, list(art.records), art.tag, set(art.link_ids))
    return list(merged.values())


# --------------------------------------------------------------------------- XL-Sum JSON lines


def _parse_xlsum_record(obj: Any, where: str) -> tuple[str, SumRecord]:
    """One XL-Sum line -> (grouping key, record)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a JSON object; expected {XLSUM_FIELDS}")
    rid = obj.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    for name, value in (("id", rid), ("summary", obj.get("summary")), ("text", obj.get("text"))):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: record has no usable {name!r} field; expected {XLSUM_FIELDS}")
    url = obj.get("url")
    key = url.strip() if isinstance(url, str) and url.strip() else rid
    return key, SumRecord(id=rid, text=obj["text"].strip(), summary=obj["summary"].strip())


class JsonlFile:
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
            raise DataError(f"{path}: file is empty; expected {XLSUM_FIELDS}")

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, i: int) -> tuple[str, SumRecord]:
        """Parse line ``i`` (0-based among non-blank lines)."""
        with self.path.open("rb") as fh:
            fh.seek(self.offsets[i])
            raw = fh.readline()
        return self._parse(raw, self.linenos[i])

    def records(self) -> list[tuple[str, SumRecord]]:
        """All lines in file order (one sequential read)."""
        with self.path.open("rb") as fh:
            lines = fh.readlines()
        return [self._parse(lines[n - 1], n) for n in self.linenos]

    def _parse(self, raw: bytes, lineno: int) -> tuple[str, SumRecord]:
        where = f"{self.path}:{lineno}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{where}: not UTF-8 text; expected {XLSUM_FIELDS}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); expected {XLSUM_FIELDS}") from None
        return _parse_xlsum_record(obj, where)

    def units(self) -> list[Unit]:
        """One lazy unit per line."""
        def make(i: int) -> Callable[[], Article]:
            def resolve() -> Article:
                key, rec = self.record(i)
                return Article(key=key, records=[rec], tag=self.tag, link_ids={rec.id})
            return resolve
        return [Unit(self.tag, make(i)) for i in range(len(self))]


# --------------------------------------------------------------------------- locating data


def expected_files(task: str, lang: str) -> str:
    """The file names ``task`` looks for in ``lang`` (for error messages)."""
    if task == "xquad":
        return f"xquad.{lang}.json"
    if task == "mlqa":
        return (f"dev-context-{lang}-question-{lang}.json and/or test-context-{lang}-question-{lang}.json "
                "(MLQA_V1 names, in the directory or a subdirectory such as dev/ or test/)")
    name = XLSUM_NAMES[lang]
    return (f"{name}_train.jsonl, {name}_val.jsonl, {name}_test.jsonl (or {lang}_{{train,val,test}}.jsonl, "
            f"or one {name}.jsonl; XL-Sum names, in the directory or a subdirectory)")


def how_to_point(task: str) -> str:
    """How to point ``task`` at its data (for error messages)."""
    if task == "xquad":
        return "pass the directory holding the XQuAD files as --data-dir"
    return f"pass --data-dir DIR (data_dir) or set {ENV_VARS[task]}"


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


def _load_qa_local(task: str, root: Path, lang: str) -> list[Article]:
    """Articles of one language from a directory (or, for mlqa, an MLQA_V1.zip archive)."""
    articles: list[Article] = []
    if root.is_file():
        if task != "mlqa" or not zipfile.is_zipfile(root):
            raise DataError(f"{task}: data_dir {root} is a file, not a directory; expected a directory holding "
                            f"{expected_files(task, lang)} "
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
                articles += parse_squad(loads_json(text, where), where, tag, f"{Path(name).stem}")
        if not members:
            raise DataError(f"{task}: no {LANG_NAMES.get(lang, lang)} file in the archive {root}; expected "
                            f"{expected_files(task, lang)}")
        return _merge(articles)
    files = _qa_files_in_dir(task, root, lang)
    if not files:
        raise DataError(f"{task}: no {LANG_NAMES.get(lang, lang)} file in {root}; expected {expected_files(task, lang)}")
    for path, tag in files:
        articles += parse_squad(loads_json(read_text(path), str(path)), str(path), tag, path.stem)
    return _merge(articles)


def looks_like_hub_id(data_dir: str) -> bool:
    """Whether a ``data_dir`` that is no path here reads as a hub id (``owner/name``)."""
    return (not os.path.isabs(data_dir) and not data_dir.startswith((".", "~"))
            and _HUB_ID_RE.fullmatch(data_dir) is not None)


def hub_offline() -> bool:
    """Whether ``datasets`` is told to stay offline (``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE``;
    ``datasets`` reads them once, when it is imported)."""
    loaded = sys.modules.get("datasets.config")
    return bool(getattr(loaded, "HF_HUB_OFFLINE", False)) or any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_endpoint() -> str:
    """The Hugging Face hub's endpoint (``HF_ENDPOINT``, default https://huggingface.co)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_unreachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub's ``endpoint`` answers a HEAD request within ``timeout`` seconds (any
    HTTP status counts: it answered), else why not, in a few words.

    One request, no retries; proxies as the environment sets them (``urllib``). The request
    runs in a daemon thread joined for ``timeout`` seconds, so a name lookup that hangs (which
    no socket timeout covers) cannot hold the caller longer.
    """
    url = endpoint or hub_endpoint()
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return f"{url!r} is not an http(s) address"
    outcome: dict[str, str | None] = {}

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome["why"] = None
        except urllib.error.HTTPError:  # a status code is an answer
            outcome["why"] = None
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer means unreachable
            reason = getattr(exc, "reason", exc)
            outcome["why"] = f"{type(reason).__name__}: {_one_line(reason)[:120]}"

    thread = threading.Thread(target=attempt, name="hpctl-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if "why" not in outcome:
        return f"no answer within {timeout:g} s"
    return outcome["why"]


#: endpoint -> (time.monotonic() of the probe, its answer): a run's check and its loads share one probe
_PROBED: dict[str, tuple[float, str | None]] = {}
#: seconds a probe's answer is reused
PROBE_REUSE_S = 60.0


def _hub_unreachable_now() -> str | None:
    """:func:`hub_unreachable` for the current endpoint, its answer reused for :data:`PROBE_REUSE_S`."""
    import time

    url = hub_endpoint()
    seen = _PROBED.get(url)
    if seen is None or time.monotonic() - seen[0] > PROBE_REUSE_S:
        seen = _PROBED[url] = (time.monotonic(), hub_unreachable(url))
    return seen[1]


@contextlib.contextmanager
def _quiet_hub(offline: bool) -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` without log lines or warnings for the block and, with
    ``offline``, told to stay offline (their module-level flags, read at call time; restored after)."""
    import datasets.config
    import huggingface_hub.constants

    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved_flags = [(mod, name, getattr(mod, name)) for mod, name in flags if hasattr(mod, name)]
    loggers = [logging.getLogger(name) for name in ("datasets", "huggingface_hub", "fsspec")]
    saved_levels = [(lg, lg.level) for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        if offline:
            for mod, name, _ in saved_flags:
                setattr(mod, name, True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for mod, name, value in saved_flags:
            setattr(mod, name, value)
        for lg, level in saved_levels:
            lg.setLevel(level)


def _hub_dataset(task: str, hub_id: str, config: str, lang: str) -> Any:
    """``datasets.load_dataset(hub_id, config)``, cached like any Hugging Face dataset (a cached
    copy also loads offline). A repository that still holds a loading script, which
    ``datasets`` 4+ refuses, is read from the hub's Parquet export (``refs/convert/parquet``)
    instead. Unless told to stay offline, the hub is probed first (:func:`hub_unreachable`); when
    it does not answer, only the cache is tried (no retries). Any failure, offline included, is
    a one-line DataError saying how to use local files.
    """
    offline = hub_offline()
    unreachable = None if offline else _hub_unreachable_now()
    try:
        import datasets  # imported lazily: slow, and only the hub needs it

        with _quiet_hub(offline=offline or unreachable is not None):
            try:
                return datasets.load_dataset(hub_id, config)
            except RuntimeError as exc:
                if "scripts are no longer supported" not in str(exc):
                    raise
                return datasets.load_dataset(hub_id, config, revision=PARQUET_EXPORT)
    except Exception as exc:  # noqa: BLE001 - any hub failure is a data problem for the user
        if offline:
            why = "datasets is offline (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set) and has no cached copy"
        elif unreachable is not None:
            why = f"the hub ({hub_endpoint()}) is not reachable ({unreachable}) and there is no cached copy"
        else:
            why = "the hub refused it"
        detail = "" if unreachable is not None else f" ({_one_line(exc)[:200]})"  # else datasets' 'offline mode'
        raise DataError(f"{task}: the Hugging Face dataset {hub_id!r} (config {config!r}) could not be loaded: {why}"
                        f"{detail}; to use local files, {how_to_point(task)}, a directory holding "
                        f"{expected_files(task, lang)}") from None


def hub_config(task: str, lang: str) -> str:
    """The hub dataset's config name for ``lang`` (``mlqa.ar.ar``, ``arabic``)."""
    return f"mlqa.{lang}.{lang}" if task == "mlqa" else XLSUM_NAMES[lang]


def check_hub_dataset(task: str, hub_id: str, lang: str) -> None:
    """A one-line DataError now (within about :data:`HUB_PROBE_TIMEOUT_S`, no retries) when the
    hub cannot give ``hub_id`` for ``lang``: offline or unreachable without a cached copy.
    Loads nothing when the hub answers (the run loads it later); otherwise loads the cached copy."""
    if hub_offline() or _hub_unreachable_now() is not None:
        _hub_dataset(task, hub_id, hub_config(task, lang), lang)


def hub_units(task: str, hub_id: str, lang: str) -> list[Unit]:
    """Units from a hub dataset (a cached copy when the hub is offline or unreachable)."""
    config = hub_config(task, lang)
    dsd = _hub_dataset(task, hub_id, config, lang)
    units: list[Unit] = []
    for split in sorted(dsd.keys()):
        ds = dsd[split]
        tag = _SPLIT_TAGS.get(split)
        where = f"{hub_id}[{config}][{split}]"
        if task == "mlqa":
            articles: list[Article] = []
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
                articles += parse_squad(squad, f"{where} row {len(articles)}", tag, fallback)
            units += [Unit(a.tag, (lambda a=a: a)) for a in _merge(articles)]
        else:
            def make(i: int, ds: Any = ds, tag: str | None = tag, where: str = where) -> Callable[[], Article]:
                def resolve() -> Article:
                    key, rec = _parse_xlsum_record(ds[i], f"{where} row {i}")
                    return Article(key=key, records=[rec], tag=tag, link_ids={rec.id})
                return resolve
            units += [Unit(tag, make(i)) for i in range(len(ds))]
    if not units:
        raise DataError(f"{task}: the hub dataset {hub_id!r} (config {config!r}) has no rows; {how_to_point(task)}")
    return units


def language_units(task: str, data_dir: str, lang: str) -> list[Unit]:
    """Shuffle units for one language of one task."""
    root = Path(data_dir).expanduser()
    if not root.exists():
        if task != "xquad" and looks_like_hub_id(data_dir):
            return hub_units(task, data_dir, lang)
        raise DataError(f"{task}: data directory not found: {root}; expected a directory holding "
                        f"{expected_files(task, lang)}; {how_to_point(task)}")
    if task in QA_TASKS:
        return [Unit(a.tag, (lambda a=a: a)) for a in _load_qa_local(task, root, lang)]
    if root.is_file():
        raise DataError(f"xlsum: data_dir {root} is a file, not a directory; expected a directory holding "
                        f"{expected_files(task, lang)} (for one data file use read_examples / `hpctl eval --data FILE`)")
    files = _xlsum_files_in_dir(root, lang)
    if not files:
        raise DataError(f"xlsum: no {LANG_NAMES[lang]} file in {root}; expected {expected_files(task, lang)}")
    units: list[Unit] = []
    for path, tag in files:
        units += JsonlFile(path, tag).units()
    return units

