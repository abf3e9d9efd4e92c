"""grasp_lora data: article-level splits (within and across languages), loaders, one-line errors."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from hpctl.errors import ConfigError, DataError
from hpctl.plugins.grasp_lora import corpora as D
from hpctl.plugins.grasp_lora.corpora import (
    LANGS,
    SPLITS,
    SplitSizes,
    TaskData,
    default_data_dir,
    load_task_data,
    read_examples,
)

XQUAD_DIR = Path(D.__file__).resolve().parent / "data" / "xquad"
TARGET_SPLITS = ("target_train", "micro_dev", "dev", "test")


def raises_one_line(exc_type: type[Exception], call, *fragments: str) -> str:
    """Run ``call``; assert the exception type, a one-line message and the fragments in it."""
    with pytest.raises(exc_type) as info:
        call()
    assert type(info.value) is exc_type
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def qid_to_title(path: Path) -> dict[str, str]:
    """Independent ground truth: question id -> article title, straight from a SQuAD file."""
    out = {}
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                out[qa["id"]] = article["title"]
    return out


def articles(td: TaskData, split: str) -> set[str]:
    return {ex.article for ex in getattr(td, split)}


# --------------------------------------------------------------------------- xquad splits


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_xquad_splits_are_disjoint_by_article_within_and_across_languages(lang, seed):
    td = load_task_data("xquad", lang, seed=seed)
    assert (td.task, td.source_lang, td.target_lang) == ("xquad", "en", lang)
    # within the target language: pairwise disjoint by article (Example.article) ...
    for i, a in enumerate(TARGET_SPLITS):
        for b in TARGET_SPLITS[i + 1:]:
            assert not articles(td, a) & articles(td, b), (a, b)
    # ... and by the real titles, read independently from the files via question ids
    target_titles = qid_to_title(XQUAD_DIR / f"xquad.{lang}.json")
    english_titles = qid_to_title(XQUAD_DIR / "xquad.en.json")
    per_split = {s: {target_titles[ex.id] for ex in getattr(td, s)} for s in TARGET_SPLITS}
    for i, a in enumerate(TARGET_SPLITS):
        for b in TARGET_SPLITS[i + 1:]:
            assert not per_split[a] & per_split[b]
    # across languages: no English source_train article appears in any target split
    source_titles = {english_titles[ex.id] for ex in td.source_train}
    used_by_target = set().union(*per_split.values())
    assert source_titles and used_by_target
    assert not source_titles & used_by_target
    assert not articles(td, "source_train") & set().union(*(articles(td, s) for s in TARGET_SPLITS))
    # and no source question is the translation of a target question (same ids across languages)
    target_ids = {ex.id for s in TARGET_SPLITS for ex in getattr(td, s)}
    assert not {ex.id for ex in td.source_train} & target_ids
    assert {ex.lang for ex in td.source_train} == {"en"}
    assert {ex.lang for s in TARGET_SPLITS for ex in getattr(td, s)} == {lang}


def test_xquad_default_sizes_are_respected():
    td = load_task_data("xquad", "ar", seed=3)
    assert td.sizes() == {"source_train": 256, "target_train": 64, "micro_dev": 32, "dev": 64, "test": 128}
    assert list(td.sizes()) == list(SPLITS)


def test_articles_per_split_count_the_topics_a_split_spans():
    """The default preset's sizes on the shipped XQuAD with a 300-question dev set: whole articles of
    ~25 questions, so the 48-question micro-dev the probes score spans two articles and the 192
    training questions eight (issue 12: 48 training questions from two were memorised)."""
    sizes = SplitSizes(source_train=96, target_train=192, micro_dev=48, dev=300, test=48)
    td = load_task_data("xquad", "ar", seed=0, sizes=sizes, max_context_chars=700)
    got = td.articles()
    assert list(got) == list(SPLITS)
    assert got == {name: len(articles(td, name)) for name in SPLITS}
    assert got["target_train"] == 8 and got["micro_dev"] == 2 and got["test"] == 1 and got["dev"] == 13
    assert load_task_data("xquad", "zh", sizes=SplitSizes(4, 4, 0, 0, 4)).articles()["dev"] == 0  # an empty split


def test_custom_sizes_are_respected_and_zero_is_allowed():
    sizes = SplitSizes(source_train=100, target_train=10, micro_dev=5, dev=0, test=40)
    td = load_task_data("xquad", "zh", seed=5, sizes=sizes)
    assert td.sizes() == {"source_train": 100, "target_train": 10, "micro_dev": 5, "dev": 0, "test": 40}


def test_same_seed_same_splits_other_seed_different():
    a = load_task_data("xquad", "ar", seed=11)
    b = load_task_data("xquad", "ar", seed=11)
    c = load_task_data("xquad", "ar", seed=12)
    assert a == b
    assert [ex.id for ex in a.test] != [ex.id for ex in c.test]
    assert articles(a, "source_train") != articles(c, "source_train")


def test_prompts_targets_and_references():
    td = load_task_data("xquad", "zh", seed=0)
    for split in SPLITS:
        for ex in getattr(td, split):
            assert ex.prompt.startswith("Context: ") and ex.prompt.endswith("\nAnswer:")
            assert "\nQuestion: " in ex.prompt
            assert ex.target.startswith(" ") and ex.target.strip() == ex.references[0]
            assert len(ex.references) == len(set(ex.references))


def test_train_windows_keep_the_answer_eval_windows_start_at_the_beginning():
    limit = 200
    td = load_task_data("xquad", "ar", seed=2, max_context_chars=limit)
    full = load_task_data("xquad", "ar", seed=2, max_context_chars=None)
    assert [ex.id for ex in td.test] == [ex.id for ex in full.test]

    def context(ex):
        return ex.prompt[len("Context: "):ex.prompt.index("\nQuestion: ")]

    for split in ("source_train", "target_train"):
        for ex in getattr(td, split):
            assert len(context(ex)) <= limit
            assert ex.target.strip() in context(ex), (split, ex.id)
    cut = 0
    for ex, whole in zip(td.test, full.test):
        assert len(context(ex)) <= limit
        assert context(whole).startswith(context(ex))
        cut += len(context(whole)) > limit
    assert cut > 0  # the limit really applied
    assert max(len(context(ex)) for ex in full.source_train) > limit


def test_too_few_articles_is_a_one_line_data_error():
    raises_one_line(DataError, lambda: load_task_data("xquad", "ar", sizes=SplitSizes(test=930)),
                    "too few articles", "test=930", "test got only 925 of 930", "Arabic")
    raises_one_line(DataError, lambda: load_task_data("xquad", "ar", sizes=SplitSizes(test=900)),
                    "too few articles", "test=900", "dev got only")
    # target splits take articles first; English source_train then runs out
    raises_one_line(DataError, lambda: load_task_data("xquad", "ar", sizes=SplitSizes(source_train=700)),
                    "too few articles", "source_train", "English")


@pytest.mark.parametrize("call, fragments", [
    (lambda: load_task_data("squad", "ar"), ("unknown grasp_lora task 'squad'", "xquad, mlqa, xlsum")),
    (lambda: load_task_data("xquad", "de"), ("unknown target language 'de'", "ar, zh")),
    (lambda: load_task_data("xquad", "en"), ("unknown target language 'en'",)),
    (lambda: load_task_data("xquad", "ar", sizes=SplitSizes(dev=-1)), ("split size dev",)),
    (lambda: load_task_data("xquad", "ar", max_context_chars=0), ("max_context_chars",)),
    (lambda: read_examples("xquad", str(XQUAD_DIR / "xquad.ar.json"), "fr"), ("unknown language 'fr'",)),
    (lambda: default_data_dir("nope"), ("unknown grasp_lora task 'nope'",)),
])
def test_bad_options_are_one_line_config_errors(call, fragments):
    raises_one_line(ConfigError, call, *fragments)


# --------------------------------------------------------------------------- data dirs and read_examples


def test_default_data_dir(monkeypatch, tmp_path):
    assert Path(default_data_dir("xquad")) == XQUAD_DIR
    monkeypatch.delenv("HPCTL_MLQA_DIR", raising=False)
    monkeypatch.delenv("HPCTL_XLSUM_DIR", raising=False)
    assert default_data_dir("mlqa") is None and default_data_dir("xlsum") is None
    monkeypatch.setenv("HPCTL_XLSUM_DIR", str(tmp_path))
    assert default_data_dir("xlsum") == str(tmp_path)


def test_read_examples_squad_file():
    exs = read_examples("xquad", str(XQUAD_DIR / "xquad.zh.json"), "zh")
    assert len(exs) == 925
    assert exs[0].id == "56beb4343aeaaa14008c925b" and exs[0].article == "Super_Bowl_50"
    assert exs[0].target == " 308" and exs[0].references == ["308"] and exs[0].lang == "zh"
    en = read_examples("xquad", str(XQUAD_DIR / "xquad.en.json"), "en", max_context_chars=None)
    assert en[0].prompt == ("Context: " + json.loads((XQUAD_DIR / "xquad.en.json").read_text())["data"][0]
                            ["paragraphs"][0]["context"] + "\nQuestion: How many points did the Panthers defense "
                            "surrender?\nAnswer:")


# --------------------------------------------------------------------------- MLQA fixture


def squad(articles_: list[dict]) -> dict:
    return {"version": "1.0", "data": articles_}


def mlqa_article(i: int, lang: str, n_questions: int = 4, title: str | None = None) -> dict:
    word = {"en": "river", "ar": "نهر", "zh": "河流"}[lang]
    qas = []
    context = " ".join(f"{word}{i}-{k} is answer{i}x{k}." for k in range(n_questions))
    for k in range(n_questions):
        answer = f"answer{i}x{k}"
        qas.append({"id": f"q{i:02d}{k}", "question": f"{word} {i} {k}?",
                    "answers": [{"text": answer, "answer_start": context.index(answer)},
                                {"text": answer, "answer_start": context.index(answer)}]})
    return {"title": title if title is not None else f"Article_{i}", "paragraphs": [{"context": context, "qas": qas}]}


def write_mlqa(root: Path, *, target_titles_translated: bool = False) -> Path:
    """MLQA_V1 layout: en has articles 0..13, ar has 0..11; dev = 0..3, test = the rest."""
    for split, ids_en, ids_ar in (("dev", range(0, 4), range(0, 4)), ("test", range(4, 14), range(4, 12))):
        folder = root / "MLQA_V1" / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}-context-en-question-en.json").write_text(
            json.dumps(squad([mlqa_article(i, "en") for i in ids_en])), encoding="utf-8")
        (folder / f"{split}-context-ar-question-ar.json").write_text(json.dumps(squad([
            mlqa_article(i, "ar", title=f"مقالة {i}" if target_titles_translated else None) for i in ids_ar
        ]), ensure_ascii=False), encoding="utf-8")
        # a G-XLT file (context ar, questions en) must be ignored
        (folder / f"{split}-context-ar-question-en.json").write_text("not json", encoding="utf-8")
    return root / "MLQA_V1"


MLQA_SIZES = SplitSizes(source_train=8, target_train=8, micro_dev=4, dev=4, test=12)


@pytest.mark.parametrize("translated_titles", [False, True])
def test_mlqa_local_dir_splits(tmp_path, translated_titles):
    root = write_mlqa(tmp_path, target_titles_translated=translated_titles)
    td = load_task_data("mlqa", "ar", data_dir=str(root), seed=0, sizes=MLQA_SIZES)
    assert td.sizes() == {"source_train": 8, "target_train": 8, "micro_dev": 4, "dev": 4, "test": 12}
    article_no = {s: {int(ex.id[1:3]) for ex in getattr(td, s)} for s in SPLITS}
    # official splits are preferred: test from test-*.json, dev and micro_dev from dev-*.json
    assert article_no["test"] <= set(range(4, 12))
    assert article_no["dev"] <= set(range(0, 4)) and article_no["micro_dev"] <= set(range(0, 4))
    for i, a in enumerate(TARGET_SPLITS):
        for b in TARGET_SPLITS[i + 1:]:
            assert not article_no[a] & article_no[b]
    # English source never uses an article that a target split used, even with translated titles
    used = set().union(*(article_no[s] for s in TARGET_SPLITS))
    assert article_no["source_train"] and not article_no["source_train"] & used
    ex = td.test[0]
    assert ex.references == [ex.target.strip()]  # duplicate answers removed
    assert ex.lang == "ar" and ex.prompt.startswith("Context: نهر")


def test_mlqa_zip_archive(tmp_path):
    root = write_mlqa(tmp_path / "src")
    archive = tmp_path / "MLQA_V1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*.json")):
            zf.write(path, str(path.relative_to(tmp_path / "src")))
    from_zip = load_task_data("mlqa", "ar", data_dir=str(archive), seed=4, sizes=MLQA_SIZES)
    from_dir = load_task_data("mlqa", "ar", data_dir=str(root), seed=4, sizes=MLQA_SIZES)
    assert from_zip == from_dir


def test_mlqa_env_var_and_missing_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("HPCTL_MLQA_DIR", raising=False)
    raises_one_line(DataError, lambda: load_task_data("mlqa", "ar"), "HPCTL_MLQA_DIR", "dev-context-ar-question-ar.json")
    root = write_mlqa(tmp_path)
    monkeypatch.setenv("HPCTL_MLQA_DIR", str(root))
    assert load_task_data("mlqa", "ar", sizes=MLQA_SIZES).sizes()["test"] == 12


def offline(monkeypatch, tmp_path):
    """``datasets`` offline with an empty cache, also when it was imported before (it reads the env once)."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_mlqa_hub_id_offline_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch, tmp_path)
    raises_one_line(DataError, lambda: load_task_data("mlqa", "ar", data_dir="facebook/mlqa"),
                    "'facebook/mlqa'", "offline", "--data-dir", "HPCTL_MLQA_DIR")


@pytest.mark.parametrize("task,env,config,fragments", [
    ("xlsum", "HPCTL_XLSUM_DIR", "arabic", ("'csebuetnlp/xlsum'", "'arabic'", "arabic_train.jsonl")),
    ("mlqa", "HPCTL_MLQA_DIR", "mlqa.ar.ar", ("'facebook/mlqa'", "'mlqa.ar.ar'", "dev-context-ar-question-ar.json")),
])
def test_no_data_dir_offline_says_how_to_point_at_local_files(task, env, config, fragments, tmp_path, monkeypatch):
    monkeypatch.delenv(env, raising=False)
    offline(monkeypatch, tmp_path)
    raises_one_line(DataError, lambda: load_task_data(task, "ar", sizes=SplitSizes(4, 4, 2, 2, 2)),
                    *fragments, "offline", "--data-dir", env)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unreachable_hub(monkeypatch) -> str:
    """No offline flag set, and the hub's endpoint a local port nothing listens on."""
    import datasets
    import huggingface_hub.constants

    from hpctl.plugins.grasp_lora import readers

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(readers, "_PROBED", {})
    return endpoint


class CacheOnlyHub:
    """``datasets.load_dataset`` stand-in that records whether it was told to stay offline and, like
    the real one retrying an unreachable hub, logs and warns; it has a cached copy of ``tables``' configs."""

    def __init__(self, tables: dict | None = None) -> None:
        self.tables, self.calls = tables or {}, []

    def __call__(self, path, name=None, revision=None, **kwargs):
        import logging
        import warnings

        import datasets
        import huggingface_hub.constants

        offline = bool(datasets.config.HF_HUB_OFFLINE) and bool(huggingface_hub.constants.HF_HUB_OFFLINE)
        self.calls.append((path, name, offline))
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        logging.getLogger("datasets.load").warning("Using the latest cached version")
        warnings.warn("hub noise", UserWarning)
        if not offline:
            raise AssertionError("load_dataset went online although the hub is unreachable")
        if name not in self.tables:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")
        return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)
                                     for split, rows in self.tables[name].items()})


def _counted_probe(monkeypatch) -> list:
    from hpctl.plugins.grasp_lora import readers

    probes: list = []
    real_probe = readers.hub_unreachable
    monkeypatch.setattr(readers, "hub_unreachable", lambda *a, **k: probes.append(a) or real_probe(*a, **k))
    return probes


def test_an_unreachable_hub_is_one_line_at_once_and_no_retry_path_is_taken(monkeypatch, capfd):
    import datasets
    import huggingface_hub.constants

    endpoint = unreachable_hub(monkeypatch)
    monkeypatch.delenv("HPCTL_XLSUM_DIR", raising=False)
    probes = _counted_probe(monkeypatch)
    fake = CacheOnlyHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    capfd.readouterr()
    message = raises_one_line(DataError, lambda: D.check_data_source("xlsum", "ar"), "'csebuetnlp/xlsum'",
                              f"the hub ({endpoint}) is not reachable", "no cached copy", "HPCTL_XLSUM_DIR")
    assert "OfflineModeIsEnabled" not in message
    assert fake.calls == [("csebuetnlp/xlsum", "arabic", True)]  # the cache only: told to stay offline
    assert len(probes) == 1  # one probe, no retries
    assert capfd.readouterr().err == ""  # the libraries' log lines and warnings were silenced
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored


def test_the_cli_says_an_unreachable_hub_in_one_line_before_the_backbone_loads(hpctl_main, tmp_path, monkeypatch):
    import datasets

    from hpctl.plugins.grasp_lora import task

    unreachable_hub(monkeypatch)
    monkeypatch.delenv("HPCTL_XLSUM_DIR", raising=False)
    probes = _counted_probe(monkeypatch)
    fake = CacheOnlyHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)

    def no_backbone(*a, **k):
        raise AssertionError("the backbone loaded before the data was checked")

    monkeypatch.setattr(task, "load_backbone", no_backbone)
    code, out, err = hpctl_main("run", "grasp_lora", "--task", "xlsum", "--lang", "ar", "--out", str(tmp_path / "run"))
    assert code != 0 and err.count("\n") == 1 and "is not reachable" in err and "Traceback" not in err
    assert all(offline for _, _, offline in fake.calls)
    assert len(probes) == 1  # the probe's answer is reused within a run, not asked again


def test_an_unreachable_hub_still_loads_a_cached_copy(monkeypatch):
    import datasets

    unreachable_hub(monkeypatch)
    monkeypatch.delenv("HPCTL_XLSUM_DIR", raising=False)
    tables = {name: {split: hub_xlsum_rows(name, split, n) for split, n in
                     (("train", 20), ("validation", 8), ("test", 8))} for name in ("english", "arabic")}
    fake = CacheOnlyHub(tables)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    D.check_data_source("xlsum", "ar")
    td = load_task_data("xlsum", "ar", sizes=XLSUM_SIZES, max_context_chars=None)
    assert td.sizes()["test"] == 6
    assert fake.calls and all(offline for _, _, offline in fake.calls)


def test_hub_probe_answers_for_a_server_and_not_for_a_closed_port():
    import http.server
    import threading

    from hpctl.plugins.grasp_lora.readers import hub_unreachable

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - the stdlib's name
            self.send_response(404)  # any status is an answer
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert hub_unreachable(f"http://127.0.0.1:{server.server_address[1]}", timeout=10) is None
    finally:
        server.shutdown()
        server.server_close()
    why = hub_unreachable(f"http://127.0.0.1:{_free_port()}", timeout=10)
    assert why is not None and "Connection" in why and "\n" not in why
    assert hub_unreachable("ftp://example.org") is not None


class FakeHub:
    """``datasets.load_dataset`` stand-in: real ``datasets.Dataset`` objects in the hub's own schema."""

    def __init__(self, tables: dict[str, dict[str, list[dict]]], script_repo: bool = False) -> None:
        self.tables, self.script_repo, self.calls = tables, script_repo, []

    def __call__(self, path, name=None, revision=None, **kwargs):
        import datasets

        self.calls.append((path, name, revision))
        if self.script_repo and revision is None:  # what datasets 4+ says of a repository with a loading script
            raise RuntimeError("Dataset scripts are no longer supported, but found xlsum.py")
        return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)
                                     for split, rows in self.tables[name].items()})


def hub_xlsum_rows(lang: str, split: str, n: int) -> list[dict]:
    return [dict(xlsum_record(lang, i, url=f"https://www.bbc.com/{lang}/{split}-{i}"), id=f"{lang}-{split}-{i}")
            for i in range(n)]


@pytest.mark.parametrize("script_repo", [False, True])
def test_xlsum_without_data_dir_loads_the_hub_dataset(script_repo, monkeypatch):
    import datasets

    monkeypatch.delenv("HPCTL_XLSUM_DIR", raising=False)
    tables = {name: {split: hub_xlsum_rows(name, split, n) for split, n in
                     (("train", 20), ("validation", 8), ("test", 8))} for name in ("english", "arabic")}
    fake = FakeHub(tables, script_repo=script_repo)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    td = load_task_data("xlsum", "ar", sizes=XLSUM_SIZES, max_context_chars=None)
    assert td.sizes() == {"source_train": 12, "target_train": 8, "micro_dev": 3, "dev": 4, "test": 6}
    assert {e.id.rsplit("-", 1)[0] for e in td.test} == {"arabic-test"}  # the hub's test split feeds ours
    assert {e.id.rsplit("-", 1)[0] for e in td.target_train} == {"arabic-train"}
    assert all(e.id.startswith("english-") for e in td.source_train)
    ex = td.test[0]
    assert ex.prompt.startswith("Article: فاض النهر") and ex.references == [ex.target.strip()]
    names = {(p, n) for p, n, _ in fake.calls}
    assert names == {("csebuetnlp/xlsum", "arabic"), ("csebuetnlp/xlsum", "english")}
    revisions = {r for _, _, r in fake.calls}
    assert revisions == ({None, "refs/convert/parquet"} if script_repo else {None})


def test_mlqa_without_data_dir_loads_the_hub_dataset(monkeypatch):
    import datasets

    monkeypatch.delenv("HPCTL_MLQA_DIR", raising=False)

    def rows(lang: str, split: str, n_ctx: int) -> list[dict]:  # MLQA's hub schema: one row per question
        out = []
        for c in range(n_ctx):
            context = f"{lang} {split} context {c}: the answer is Paris{c}."
            for q in range(2):
                out.append({"context": context, "question": f"{lang} question {c}.{q}?",
                            "answers": {"answer_start": [context.index(f"Paris{c}")], "text": [f"Paris{c}"]},
                            "id": f"{lang}-{split}-{c}-{q}"})
        return out

    tables = {f"mlqa.{l}.{l}": {"validation": rows(l, "validation", 6), "test": rows(l, "test", 8)}
              for l in ("en", "ar")}
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(tables))
    td = load_task_data("mlqa", "ar", sizes=MLQA_SIZES)
    assert td.sizes() == {"source_train": 8, "target_train": 8, "micro_dev": 4, "dev": 4, "test": 12}
    assert all(e.id.startswith("ar-test-") for e in td.test)
    assert all(e.id.startswith("en-") for e in td.source_train)
    ex = td.test[0]
    assert ex.target == " " + ex.references[0] and ex.references[0].startswith("Paris")
    # whole contexts (the hub's rows carry no title) stay in one split
    for split in ("target_train", "micro_dev", "dev", "test"):
        others = set().union(*(articles(td, o) for o in ("target_train", "micro_dev", "dev", "test") if o != split))
        assert not articles(td, split) & others


@pytest.mark.parametrize("drop", ["text", "summary"])
def test_hub_xlsum_row_without_text_or_summary_is_a_one_line_data_error(drop, monkeypatch):
    import datasets

    monkeypatch.delenv("HPCTL_XLSUM_DIR", raising=False)
    tables = {name: {"train": hub_xlsum_rows(name, "train", 30)} for name in ("english", "arabic")}
    for row in tables["arabic"]["train"]:
        row[drop] = ""
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(tables))
    raises_one_line(DataError, lambda: load_task_data("xlsum", "ar", sizes=XLSUM_SIZES),
                    "csebuetnlp/xlsum[arabic][train] row", f"no usable {drop!r} field")


# --------------------------------------------------------------------------- XL-Sum fixture


def xlsum_record(lang: str, i: int, url: str | None = None) -> dict:
    text = {"english": "The river flooded the town", "arabic": "فاض النهر على البلدة",
            "chinese_simplified": "河水淹没了小镇"}[lang]
    return {"id": f"{lang}-{i}", "url": url or f"https://www.bbc.com/{lang}/news-{i}", "title": f"title {i}",
            "summary": f"{text} {i}", "text": f"{text} {i}. " * 30}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write_xlsum(root: Path, target: str = "arabic", short: str = "ar") -> Path:
    write_jsonl(root / "english" / "english_train.jsonl", [xlsum_record("english", i) for i in range(30)])
    write_jsonl(root / "english" / "english_test.jsonl", [xlsum_record("english", i) for i in range(30, 35)])
    recs = [xlsum_record(target, i) for i in range(40)]
    recs[1]["url"] = recs[0]["url"]  # a second record of one article (url): never used twice
    write_jsonl(root / target / f"{target}_train.jsonl", recs[:20])
    write_jsonl(root / target / f"{target}_val.jsonl", recs[20:30])
    write_jsonl(root / target / f"{target}_test.jsonl", recs[30:])
    return root


XLSUM_SIZES = SplitSizes(source_train=12, target_train=8, micro_dev=3, dev=4, test=6)


def test_xlsum_local_dir_splits(tmp_path):
    root = write_xlsum(tmp_path)
    td = load_task_data("xlsum", "ar", data_dir=str(root), seed=0, sizes=XLSUM_SIZES, max_context_chars=100)
    assert td.sizes() == {"source_train": 12, "target_train": 8, "micro_dev": 3, "dev": 4, "test": 6}
    urls = {s: [ex.article for ex in getattr(td, s)] for s in SPLITS}
    all_target = [u for s in TARGET_SPLITS for u in urls[s]]
    assert len(all_target) == len(set(all_target))  # disjoint by url (and no url twice)
    assert not set(urls["source_train"]) & set(all_target)
    number = {s: {int(ex.id.rsplit("-", 1)[1]) for ex in getattr(td, s)} for s in SPLITS}
    assert number["test"] <= set(range(30, 40))
    assert number["dev"] <= set(range(20, 30)) and number["micro_dev"] <= set(range(20, 30))
    assert number["target_train"] <= set(range(0, 20)) and number["source_train"] <= set(range(0, 30))
    ex = td.test[0]
    assert ex.prompt.startswith("Article: فاض النهر") and ex.prompt.endswith("\nSummary:")
    assert len(ex.prompt) <= len("Article: ") + 100 + len("\nSummary:")
    assert ex.target == " " + ex.references[0] and ex.lang == "ar"
    assert {e.lang for e in td.source_train} == {"en"}
    again = load_task_data("xlsum", "ar", data_dir=str(root), seed=0, sizes=XLSUM_SIZES, max_context_chars=100)
    other = load_task_data("xlsum", "ar", data_dir=str(root), seed=1, sizes=XLSUM_SIZES, max_context_chars=100)
    assert again == td and other != td


def test_xlsum_chinese_and_short_names(tmp_path):
    root = write_xlsum(tmp_path, "chinese_simplified")
    td = load_task_data("xlsum", "zh", data_dir=str(root), sizes=XLSUM_SIZES)
    assert td.test[0].prompt.startswith("Article: 河水") and td.test[0].lang == "zh"
    short = tmp_path / "short"
    write_jsonl(short / "en_train.jsonl", [xlsum_record("english", i) for i in range(20)])
    write_jsonl(short / "ar.jsonl", [xlsum_record("arabic", i) for i in range(30)])
    assert load_task_data("xlsum", "ar", data_dir=str(short), sizes=XLSUM_SIZES).sizes()["source_train"] == 12


def test_read_examples_jsonl(tmp_path):
    path = tmp_path / "arabic_test.jsonl"
    write_jsonl(path, [xlsum_record("arabic", i) for i in range(3)])
    exs = read_examples("xlsum", str(path), "ar", max_context_chars=None)
    assert [e.id for e in exs] == ["arabic-0", "arabic-1", "arabic-2"]
    assert exs[1].references == ["فاض النهر على البلدة 1"] and exs[1].article.endswith("news-1")
    assert exs[1].prompt == "Article: " + ("فاض النهر على البلدة 1. " * 30).strip() + "\nSummary:"


# --------------------------------------------------------------------------- one-line data errors


def test_missing_data_dir(tmp_path):
    raises_one_line(DataError, lambda: load_task_data("xquad", "ar", data_dir=str(tmp_path / "nope")),
                    "data directory not found", str(tmp_path / "nope"), "xquad.ar.json")
    raises_one_line(DataError, lambda: load_task_data("xlsum", "ar", data_dir=str(tmp_path / "gone")),
                    "data directory not found", "arabic_train.jsonl", "HPCTL_XLSUM_DIR")


def test_missing_files_name_the_expected_files(tmp_path):
    raises_one_line(DataError, lambda: load_task_data("xquad", "zh", data_dir=str(tmp_path)),
                    "no Chinese file in", "xquad.zh.json")
    (tmp_path / "xquad.zh.json").write_text((XQUAD_DIR / "xquad.zh.json").read_text(encoding="utf-8"), encoding="utf-8")
    raises_one_line(DataError, lambda: load_task_data("xquad", "zh", data_dir=str(tmp_path)),
                    "no English file in", "xquad.en.json")
    mlqa = tmp_path / "mlqa"
    mlqa.mkdir()
    (mlqa / "dev-context-en-question-en.json").write_text(json.dumps(squad([mlqa_article(0, "en")])))
    raises_one_line(DataError, lambda: load_task_data("mlqa", "ar", data_dir=str(mlqa)),
                    "no Arabic file in", "dev-context-ar-question-ar.json", "test-context-ar-question-ar.json")
    xl = tmp_path / "xl"
    write_jsonl(xl / "arabic_train.jsonl", [xlsum_record("arabic", 0)])
    raises_one_line(DataError, lambda: load_task_data("xlsum", "ar", data_dir=str(xl)),
                    "no English file in", "english_train.jsonl")
    raises_one_line(DataError, lambda: read_examples("xquad", str(tmp_path / "none.json"), "ar"),
                    "data file not found", "none.json")


def write_xquad_pair(root: Path, ar_text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "xquad.en.json").write_text((XQUAD_DIR / "xquad.en.json").read_text(encoding="utf-8"), encoding="utf-8")
    (root / "xquad.ar.json").write_text(ar_text, encoding="utf-8")


def broken_squad(drop: str) -> str:
    doc = squad([mlqa_article(0, "ar")])
    qa = doc["data"][0]["paragraphs"][0]["qas"][0]
    if drop == "data":
        doc = {"version": "1.0", "articles": doc["data"]}
    elif drop == "answers.text":
        del qa["answers"][0]["text"]
    else:
        del qa[drop]
    return json.dumps(doc)


@pytest.mark.parametrize("content, fragments", [
    ("", ("xquad.ar.json", "file is empty")),
    ("   \n", ("file is empty",)),
    ('{"data": [', ("xquad.ar.json", "not valid JSON", "line 1")),
    (broken_squad("data"), ("top-level 'data' field",)),
    (broken_squad("question"), ("data[0].paragraphs[0].qas[0]", "'question' field")),
    (broken_squad("id"), ("'id' field",)),
    (broken_squad("answers"), ("'answers' field",)),
    (broken_squad("answers.text"), ("answers[0]", "'text' field")),
    (json.dumps(squad([])), ("no answerable questions",)),
])
def test_bad_squad_files_are_one_line_data_errors(tmp_path, content, fragments):
    write_xquad_pair(tmp_path, content)
    raises_one_line(DataError, lambda: load_task_data("xquad", "ar", data_dir=str(tmp_path)), *fragments)
    raises_one_line(DataError, lambda: read_examples("xquad", str(tmp_path / "xquad.ar.json"), "ar"), *fragments)


@pytest.mark.parametrize("lines, fragments", [
    ([], ("arabic_test.jsonl", "file is empty")),
    (['{"id": "a", "summary": "s", "text": "t"}', '{"id": "b", "summary": '], ("arabic_test.jsonl:2", "not valid JSON")),
    (['{"id": "a", "url": "u", "text": "t"}'], ("arabic_test.jsonl:1", "'summary' field")),
    (['{"id": "a", "url": "u", "summary": "s"}'], ("'text' field",)),
    (['{"url": "u", "summary": "s", "text": "t"}'], ("'id' field",)),
    (['["not", "an", "object"]'], ("not a JSON object",)),
])
def test_bad_xlsum_files_are_one_line_data_errors(tmp_path, lines, fragments):
    path = tmp_path / "arabic_test.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    raises_one_line(DataError, lambda: read_examples("xlsum", str(path), "ar"), *fragments)
    write_jsonl(tmp_path / "english_train.jsonl", [xlsum_record("english", i) for i in range(5)])
    # lines are parsed when drawn: ask for every line so the bad one is reached
    sizes = SplitSizes(source_train=1, target_train=0, micro_dev=0, dev=0, test=max(1, len(lines)))
    raises_one_line(DataError, lambda: load_task_data("xlsum", "ar", data_dir=str(tmp_path), sizes=sizes), *fragments)


def test_xlsum_too_few_articles(tmp_path):
    root = write_xlsum(tmp_path)
    raises_one_line(DataError, lambda: load_task_data("xlsum", "ar", data_dir=str(root),
                                                      sizes=SplitSizes(test=50, dev=0, micro_dev=0, target_train=0)),
                    "too few articles", "test")
