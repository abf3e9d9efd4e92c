"""grasp_lora metrics: evaluate modules loaded by path offline, hand-computed values in en/ar/zh."""

from __future__ import annotations

import math

import pytest
import torch

from hpctl.errors import ConfigError
from hpctl.plugins.grasp_lora.metrics import (
    METRICS_DIR,
    SEMANTIC_ENCODER_NOTE,
    compute_metrics,
    describe_metrics,
    load_metric,
    metric_path,
)

MODULES = ("qa_f1_em", "ml_rouge", "bleu4", "semantic_f1")


def qa(lang, predictions, references):
    return load_metric("qa_f1_em").compute(predictions=predictions, references=references, lang=lang)


def rouge(lang, prediction, reference):
    return load_metric("ml_rouge").compute(predictions=[prediction], references=[[reference]], lang=lang)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", MODULES)
def test_modules_load_by_path_offline(name, monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = metric_path(name)
    assert path == str(METRICS_DIR / f"{name}.py")
    module = evaluate.load(path, keep_in_memory=True)
    assert isinstance(module, evaluate.Metric)
    assert load_metric(name) is load_metric(name)  # cached


# --------------------------------------------------------------------------- QA exact match / F1


def test_qa_english_punctuation_articles_and_f1():
    # "The Cairo!" -> "cairo": EM after punctuation and article removal
    assert qa("en", ["The Cairo!"], [["Cairo"]]) == {"exact_match": 100.0, "f1": 100.0}
    # "the big red car" -> [big, red, car] vs [red, car]: P=2/3, R=1, F1=0.8
    out = qa("en", ["the big red car"], [["red car"]])
    assert out["exact_match"] == 0.0 and out["f1"] == pytest.approx(80.0)
    # best reference counts; mean over questions
    out = qa("en", ["The Cairo!", "the big red car"], [["Giza", "Cairo"], ["blue car", "red car"]])
    assert out["exact_match"] == pytest.approx(50.0) and out["f1"] == pytest.approx(90.0)
    # no shared token
    assert qa("en", ["Paris"], [["Cairo"]]) == {"exact_match": 0.0, "f1": 0.0}


def test_qa_arabic_article_removal():
    # MLQA removes the Arabic article "ال": "القاهرة" == "قاهرة"
    assert qa("ar", ["القاهرة"], [["قاهرة"]]) == {"exact_match": 100.0, "f1": 100.0}
    # Arabic punctuation ("،" and "؟") is removed too
    assert qa("ar", ["القاهرة،؟"], [["القاهرة"]])["exact_match"] == 100.0
    # "مدينة القاهرة الكبرى" -> [مدينة, قاهرة, كبرى] vs [قاهرة]: P=1/3, R=1, F1=50
    out = qa("ar", ["مدينة القاهرة الكبرى"], [["القاهرة"]])
    assert out["exact_match"] == 0.0 and out["f1"] == pytest.approx(50.0)
    # the English article list does not apply to Arabic and vice versa
    assert qa("en", ["القاهرة"], [["قاهرة"]])["exact_match"] == 0.0


def test_qa_chinese_is_scored_by_character():
    # pred 北京大学 vs ref 北京: 4 vs 2 character tokens, 2 shared: P=2/4, R=2/2, F1=66.67
    out = qa("zh", ["北京大学"], [["北京"]])
    assert out["exact_match"] == 0.0 and out["f1"] == pytest.approx(200 / 3)
    # Chinese punctuation removed before EM
    assert qa("zh", ["北京。"], [["北京"]]) == {"exact_match": 100.0, "f1": 100.0}
    # mixed segmentation: "2008年北京" -> [2008, 年, 北, 京]; vs "北京": P=2/4, R=1
    assert qa("zh", ["2008年北京"], [["北京"]])["f1"] == pytest.approx(200 / 3)
    # the same string scored as English (whitespace tokens) gives 0: one token each, different
    assert qa("en", ["北京大学"], [["北京"]])["f1"] == 0.0


def test_qa_rejects_unknown_language():
    with pytest.raises(ValueError, match="unknown answer language 'fr'"):
        qa("fr", ["a"], [["a"]])


# --------------------------------------------------------------------------- ROUGE


def test_rouge_english_hand_values():
    out = rouge("en", "The cat sat on a mat.", "The cat sat on the mat.")
    # unigrams: 5 of 6 shared; bigrams: the-cat, cat-sat, sat-on shared, 3 of 5; LCS 5
    assert out["rouge1"] == pytest.approx(500 / 6)
    assert out["rouge2"] == pytest.approx(60.0)
    assert out["rougeL"] == pytest.approx(500 / 6)


def test_rouge_arabic_is_not_zero():
    ref = "ذهب الولد إلى المدرسة صباحا"
    near = "ذهب الولد إلى المدرسة مساء"
    out = rouge("ar", near, ref)
    assert min(out.values()) > 50
    # 4 of 5 words shared, 3 of 4 bigrams
    assert out["rouge1"] == pytest.approx(80.0)
    assert out["rouge2"] == pytest.approx(75.0)
    assert out["rougeL"] == pytest.approx(80.0)
    assert rouge("ar", ref, ref) == {"rouge1": pytest.approx(100.0), "rouge2": pytest.approx(100.0),
                                     "rougeL": pytest.approx(100.0)}


def test_rouge_chinese_is_segmented_into_words():
    mod = load_metric("ml_rouge")
    from hpctl.plugins.grasp_lora.metrics import ml_rouge

    assert ml_rouge.tokenize("我爱北京天安门。", "zh") == ["我", "爱", "北京", "天安门"]
    out = rouge("zh", "北京是中国的首都，也是文化中心。", "北京是中国的首都，也是政治中心。")
    assert min(out.values()) > 50
    # jieba words: pred [我 爱 北京 天安门] vs ref [我 爱 北京]: P=3/4, R=1 -> 85.71
    # (character tokens would give P=4/7 -> 72.73)
    out = rouge("zh", "我爱北京天安门", "我爱北京")
    assert out["rouge1"] == pytest.approx(600 / 7)
    assert out["rouge2"] == pytest.approx(80.0)  # bigrams 2 of 3 vs 2 of 2
    # spaces between words are not tokens: [北京, 天安门] vs [北京, 故宫] -> 50, not 66.67
    assert rouge("zh", "北京 天安门", "北京 故宫")["rouge1"] == pytest.approx(50.0)
    assert mod is load_metric("ml_rouge")


def test_rouge_best_reference_and_mean():
    out = load_metric("ml_rouge").compute(
        predictions=["the cat sat", "a dog ran"],
        references=[["a bird flew", "the cat sat"], ["cats sleep"]], lang="en")
    assert out["rouge1"] == pytest.approx(50.0)  # (100 + 0) / 2


# --------------------------------------------------------------------------- BLEU


def bleu(lang, predictions, references):
    return load_metric("bleu4").compute(predictions=predictions, references=references, lang=lang)["bleu4"]


def test_bleu_hand_values():
    # p1..p4 = 4/5, 3/4, 2/3, 1/2, no brevity penalty
    assert bleu("en", ["a b c d e"], [["a b c d f"]]) == pytest.approx(100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # Chinese by character (tokenize="zh"): all n-grams match, brevity penalty exp(1 - 7/6)
    assert bleu("zh", ["我爱北京天安"], [["我爱北京天安门"]]) == pytest.approx(100 * math.exp(1 - 7 / 6))
    sentence = "ذهب الولد إلى المدرسة صباحا"
    assert bleu("ar", [sentence], [[sentence]]) == pytest.approx(100.0)
    # examples with different numbers of references
    assert bleu("en", ["a b c d e", "w x y z"], [["a b c d f", "a b c d e"], ["w x y z"]]) == pytest.approx(100.0)


# --------------------------------------------------------------------------- semantic F1


def one_hot_embed(texts):
    """Fake encoder: one one-hot vector per whitespace token (cosine = 1 iff same token)."""
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(tok, len(vocab)) for tok in text.split()] for text in texts]
    return [torch.nn.functional.one_hot(torch.tensor(row, dtype=torch.long), num_classes=len(vocab)).float()
            .reshape(len(row), len(vocab)) for row in ids]


def test_semantic_f1_greedy_matching():
    sem = load_metric("semantic_f1")
    out = sem.compute(predictions=["a b c"], references=[["a b"]], embed_fn=one_hot_embed)
    # precision: a, b match, c has no match -> 2/3; recall: 1; F1 = 0.8
    assert out["semantic_precision"] == pytest.approx(200 / 3)
    assert out["semantic_recall"] == pytest.approx(100.0)
    assert out["semantic_f1"] == pytest.approx(80.0)
    # best reference counts; orthogonal texts score 0
    out = sem.compute(predictions=["a b c", "x y"], references=[["q", "a b c"], ["z"]], embed_fn=one_hot_embed)
    assert out["semantic_f1"] == pytest.approx(50.0)

    def scaled(texts):  # cosine ignores vector length
        return [3.0 * t for t in one_hot_embed(texts)]

    assert sem.compute(predictions=["a b c"], references=[["a b"]], embed_fn=scaled)["semantic_f1"] == pytest.approx(80.0)


def test_semantic_f1_soft_similarity():
    def embed(texts):
        table = {"cat": [1.0, 0.0], "kitten": [0.6, 0.8], "car": [0.0, 1.0]}
        return [torch.tensor([table[w] for w in t.split()]) for t in texts]

    out = load_metric("semantic_f1").compute(predictions=["kitten"], references=[["cat car"]], embed_fn=embed)
    # sims kitten.cat = 0.6, kitten.car = 0.8: precision = 0.8, recall = (0.6 + 0.8) / 2 = 0.7
    assert out["semantic_precision"] == pytest.approx(80.0)
    assert out["semantic_recall"] == pytest.approx(70.0)
    assert out["semantic_f1"] == pytest.approx(100 * 2 * 0.8 * 0.7 / 1.5)


# --------------------------------------------------------------------------- compute_metrics


def test_compute_metrics_keys_and_values():
    out = compute_metrics("xquad", "zh", ["北京大学"], [["北京"]])
    assert set(out) == {"exact_match", "f1"} and out["f1"] == pytest.approx(200 / 3)
    assert compute_metrics("mlqa", "ar", ["القاهرة"], [["قاهرة"]]) == {"exact_match": 100.0, "f1": 100.0}
    summ = compute_metrics("xlsum", "ar", ["ذهب الولد إلى المدرسة مساء"],
                           [["ذهب الولد إلى المدرسة صباحا"]])
    assert set(summ) == {"rouge1", "rouge2", "rougeL", "bleu4"}
    assert summ["rouge1"] == pytest.approx(80.0) and all(isinstance(v, float) for v in summ.values())
    with_sem = compute_metrics("xlsum", "en", ["a b c"], [["a b"]], embed_fn=one_hot_embed, encoder_name="fake-onehot")
    assert set(with_sem) == {"rouge1", "rouge2", "rougeL", "bleu4", "semantic_f1"}
    assert with_sem["semantic_f1"] == pytest.approx(80.0)
    notes = describe_metrics("xlsum", "en", "fake-onehot")
    assert set(notes) == set(with_sem) and notes["semantic_f1"] == SEMANTIC_ENCODER_NOTE.format(encoder="fake-onehot")


def test_compute_metrics_errors():
    with pytest.raises(ConfigError, match="unknown grasp_lora task 'squad'"):
        compute_metrics("squad", "ar", ["a"], [["a"]])
    with pytest.raises(ConfigError, match="unknown language 'de'"):
        compute_metrics("xquad", "de", ["a"], [["a"]])
    with pytest.raises(ValueError, match="encoder_name is required"):
        compute_metrics("xlsum", "en", ["a"], [["a"]], embed_fn=one_hot_embed)
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        compute_metrics("xquad", "en", ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics("xlsum", "zh", [], [])
