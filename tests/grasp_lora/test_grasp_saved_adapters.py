"""Every adapter a grasp_lora run makes is saved, recorded, loadable by peft and scored by `hpctl eval`.

One smoke run (tiny backbone) is shared by the session (``grasp_smoke_run``); the checks read its
folder, its MLflow runs, and score its adapters again with `hpctl eval`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

from hpctl.plugins.grasp_lora import GraspLoraConfig, GraspLoraPlugin  # noqa: E402
from hpctl.plugins.grasp_lora.outputs import ADAPTER_FOLDERS  # noqa: E402

XQUAD_AR = Path(__file__).resolve().parents[2] / "plugins" / "grasp_lora" / "data" / "xquad" / "xquad.ar.json"


@pytest.fixture
def smoke_run(grasp_smoke_run):
    """The session's ``hpctl run grasp_lora --preset smoke`` (tests/conftest.py): (run folder, result.json)."""
    return grasp_smoke_run.run, grasp_smoke_run.result


def test_every_adapter_is_saved_and_recorded(smoke_run):
    run, result = smoke_run
    artifacts = {Path(p).name for p in result["artifacts"]}
    assert set(ADAPTER_FOLDERS.values()) <= artifacts  # result.json lists what exists
    assert {"test_predictions.jsonl", "target_only_test_predictions.jsonl"} <= artifacts
    # the grid's measure at the learned ratio (for the regret) and for the baseline
    assert np.isfinite(result["metrics"]["dev_loss"]) and np.isfinite(result["metrics"]["target_only_dev_loss"])
    notes = json.loads((run / "grasp_phases.json").read_text())["notes"]
    assert set(notes["adapters"]) == set(ADAPTER_FOLDERS)
    for role, folder in ADAPTER_FOLDERS.items():
        config = json.loads((run / folder / "adapter_config.json").read_text())
        base = config["base_model_name_or_path"]
        assert base and Path(base).is_absolute() and (Path(base) / "config.json").is_file(), (role, base)
        meta = json.loads((run / folder / "grasp_lora.json").read_text())
        assert meta["role"] == role and meta["backbone_spec"] == "tiny"  # hpctl's own name, kept
    # the target-only adapter is saved as its own rank-r factors, not a full-rank export
    assert json.loads((run / "target_only_adapter" / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((run / "target_only_adapter" / "grasp_lora.json").read_text())["export"] == "factors"


def test_auto_peft_loads_the_final_adapter_offline(smoke_run, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    from hpctl.plugins.grasp_lora.backbone import load_backbone
    from hpctl.plugins.grasp_lora.delta import merged_into_copies
    from hpctl.plugins.grasp_lora.lora import load_lora, lora_factors, unload_lora

    run, _ = smoke_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(run / "final_adapter"))
    ids = torch.tensor([[2, 1000, 2000, 3000, 4000, 5000]])
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    # the same adapter merged into hpctl's own tiny backbone: the same model
    model, _, _ = load_backbone("tiny")
    peft_model = load_lora(model, run / "final_adapter", "final")
    factors = lora_factors(peft_model, "final")
    model = unload_lora(peft_model)
    with merged_into_copies(model, factors), torch.no_grad():
        want = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _test_split_file(run: Path, tmp_path: Path) -> Path:
    """A SQuAD file holding exactly the run's test questions (ids from its predictions)."""
    ids = {json.loads(line)["id"] for line in (run / "test_predictions.jsonl").read_text().splitlines()}
    data = json.loads(XQUAD_AR.read_text(encoding="utf-8"))
    articles = []
    for art in data["data"]:
        pars = [dict(p, qas=[q for q in p["qas"] if q["id"] in ids]) for p in art["paragraphs"]]
        pars = [p for p in pars if p["qas"]]
        if pars:
            articles.append(dict(art, paragraphs=pars))
    path = tmp_path / "test_split.json"
    path.write_text(json.dumps({"version": "1", "data": articles}, ensure_ascii=False), encoding="utf-8")
    return path


def test_eval_scores_every_adapter_as_the_run_did(smoke_run, hpctl_main, tmp_path):
    run, result = smoke_run
    data = _test_split_file(run, tmp_path)
    scored = {}
    for adapter in ADAPTER_FOLDERS:
        code, out, err = hpctl_main("eval", str(run), "--data", str(data), "--adapter", adapter, "--json")
        assert code == 0, err
        scored[adapter] = json.loads(out.strip().splitlines()[-1])
        assert f"[grasp_lora] {adapter} adapter: generating" in err  # progress lines (stderr is no TTY here)
        assert "teacher-forced loss 4/4" in err
    m = result["metrics"]
    assert scored["final"]["examples"] == 4.0
    # merged weights score what the run's in-memory model scored on the same questions
    assert scored["final"]["loss"] == pytest.approx(m["loss"], rel=1e-5)
    assert scored["final"]["f1"] == pytest.approx(m["f1"], abs=1e-6)
    assert scored["target_only"]["loss"] == pytest.approx(m["target_only_loss"], rel=1e-4)
    losses = {a: s["loss"] for a, s in scored.items()}
    assert len({round(v, 6) for v in losses.values()}) == 4, losses  # four different adapters


def test_eval_adapter_errors_are_one_line(smoke_run, hpctl_main, tmp_path):
    run, _ = smoke_run
    code, _, err = hpctl_main("eval", str(run), "--data", str(XQUAD_AR), "--adapter", "nope")
    assert code == 2 and "unknown adapter 'nope' (choose from final, target_only, source, target)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    partial = tmp_path / "partial"
    shutil.copytree(run, partial, ignore=shutil.ignore_patterns("target_only_adapter"))
    code, _, err = hpctl_main("eval", str(partial), "--data", str(XQUAD_AR), "--adapter", "target_only")
    assert code == 2 and "has no target_only adapter" in err and "saved: final, source, target" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_nested_phase_runs_carry_params_and_per_step_losses(smoke_run):
    from mlflow.tracking import MlflowClient

    _, result = smoke_run
    client = MlflowClient(result["tracking_uri"])
    exp = client.get_run(result["mlflow_run_id"]).info.experiment_id
    children = {c.info.run_name: c for c in
                client.search_runs([exp], f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'")}
    expect = {"source_adapter": ("steps", "2"), "target_adapter": ("steps", "2"), "final_train": ("steps", "4"),
              "target_only": ("steps", "4")}
    for name, (key, value) in expect.items():
        run = children[name]
        assert run.data.params[key] == value, (name, run.data.params)
        assert {"lr", "batch_size"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [h.step for h in history] == list(range(int(value))), name  # every step's loss
        assert all(np.isfinite(h.value) for h in history)
    assert float(children["final_train"].data.params["prune_ratio"]) == pytest.approx(
        result["learned"]["prune_ratio"])
    assert children["target_only"].data.params["prune_ratio"] == "0.0"


@pytest.mark.slow
def test_the_final_run_of_a_grid_point_is_that_points_fine_tune(tmp_path):
    """Under --controller grid the final adapter is the chosen point's: same start, seed and batches."""
    task = GraspLoraPlugin().make_task(GraspLoraConfig(preset="smoke", baseline="none"), seed=0, out_dir=tmp_path)
    value = np.array([0.3])
    task.full_run(value)  # one grid point
    point = task.adapter.state_tensors()
    task.full_run(np.array([0.7]))  # another point ran after it
    task.finish(value)
    for key, tensor in task.adapter.state_tensors().items():
        assert torch.equal(tensor, point[key]), key
    task.close()


def _write_xlsum(root: Path) -> Path:
    """Tiny XL-Sum files (english + arabic, XL-Sum names and fields)."""
    root.mkdir(parents=True, exist_ok=True)
    words = {"english": "The river flooded the town", "arabic": "فاض النهر على البلدة"}
    for lang, n in (("english", 16), ("arabic", 30)):
        lines = [json.dumps({"id": f"{lang}-{i}", "url": f"https://www.bbc.com/{lang}/{i}", "title": f"t{i}",
                             "summary": f"{words[lang]} {i}", "text": f"{words[lang]} {i}. " * 12},
                            ensure_ascii=False) for i in range(n)]
        (root / f"{lang}_train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_xlsum_reports_rouge_bleu_and_a_named_semantic_f1_and_probes_by_it(tmp_path):
    from hpctl.plugins.grasp_lora.backbone import load_backbone
    from hpctl.plugins.grasp_lora.lm import embed_texts

    data = _write_xlsum(tmp_path / "xlsum")
    task = GraspLoraPlugin().make_task(GraspLoraConfig(preset="smoke", task="xlsum", data_dir=str(data),
                                                       probe_metric="semantic_f1", max_new_tokens=4,
                                                       source_steps=0, target_steps=0),
                                       seed=0, out_dir=tmp_path / "run")
    task.reset(0)
    before = task.snapshot()
    score = task.probe(np.array([0.3]))  # a probe scored by the semantic F1
    assert np.isfinite(score) and -100.0 <= score <= 100.0
    metrics = task.evaluate("micro_dev", np.array([0.3]))
    assert {"rouge1", "rouge2", "rougeL", "bleu4", "semantic_f1", "loss", "score"} <= set(metrics)
    assert metrics["score"] == metrics["rougeL"]
    for key, value in task.snapshot().items():  # probing and evaluating wrote nothing
        if key == "adapter":
            for name, t in value.items():
                assert torch.equal(t, before["adapter"][name])
    # the encoder is the frozen backbone with no adapter installed, and the outputs name it
    name, embed = task._encoder()
    assert "no adapter" in name and "tiny-gemma3" in name
    fresh, tok, _ = load_backbone("tiny")
    text = "فاض النهر على البلدة 3"
    with task.pruner.applied(np.array([0.3])):  # even while the pruned adapter is applied
        got = embed([text])[0]
    torch.testing.assert_close(got, embed_texts(fresh, tok, [text])[0])
    task.close()


@pytest.mark.parametrize("task_name,metric,ok", [
    ("xquad", "exact_match", True), ("xquad", "f1", True), ("xquad", "rougeL", False),
    ("xquad", "semantic_f1", False), ("xlsum", "bleu4", True), ("xlsum", "semantic_f1", True),
    ("xlsum", "f1", False), ("xquad", "loss", True), ("xlsum", "loss", True),
])
def test_probe_metric_must_be_a_metric_of_the_task(task_name, metric, ok):
    from hpctl.errors import ConfigError

    if ok:
        assert GraspLoraConfig(task=task_name, probe_metric=metric).probe_metric == metric
        return
    with pytest.raises(ConfigError, match=f"probe metric '{metric}' is not a {task_name} metric") as info:
        GraspLoraConfig(task=task_name, probe_metric=metric)
    assert "\n" not in str(info.value)


def test_probe_metric_on_the_cli_is_a_one_line_error(hpctl_main):
    code, _, err = hpctl_main("run", "grasp_lora", "--preset", "smoke", "--probe-metric", "rouge")
    assert code == 2 and "rouge" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = hpctl_main("run", "grasp_lora", "--preset", "smoke", "--probe-metric", "bleu4")
    assert code == 2 and "probe metric 'bleu4' is not a xquad metric" in err and "Traceback" not in err


def test_eval_progress_bar_on_a_terminal_plain_lines_elsewhere():
    import io

    from hpctl.plugins.grasp_lora.progress import eval_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = io.StringIO()
    with eval_progress("final adapter", plain) as progress:
        for stage in ("generate", "loss"):
            progress(stage, 0, 20)
            for done in range(2, 21, 2):
                progress(stage, done, 20)
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("[grasp_lora] final adapter: generating 2/20 (") and lines[0].endswith(" s per example)")
    assert sum("generating" in x for x in lines) == 10 and lines[-1].startswith(
        "[grasp_lora] final adapter: teacher-forced loss 20/20")
    term = Terminal()
    with eval_progress("final adapter", term) as progress:
        progress("generate", 0, 20)
        progress("generate", 20, 20)
    out = term.getvalue()
    assert "final adapter: generating" in out and "20/20" in out and "[grasp_lora]" not in out  # a rich bar


def test_the_final_adapter_is_compact_and_the_exact_delta_is_beside_it(smoke_run):
    run, result = smoke_run
    m = result["metrics"]
    config = json.loads((run / "final_adapter" / "adapter_config.json").read_text())
    # an ordinary-rank LoRA (no per-module full ranks), chosen within the stated tolerance of the exact adapter
    assert config["r"] == int(m["export_rank"]) and config["lora_alpha"] == config["r"] and not config["rank_pattern"]
    assert m["export_within_tolerance"] == 1.0 and m["export_loss_gap"] <= m["export_tolerance"] == 0.005
    assert m["export_adapter_loss"] <= m["export_exact_loss"] * (1 + m["export_tolerance"])
    assert m["export_exact_loss"] == m["dev_loss"]
    weights = (run / "final_adapter" / "adapter_model.safetensors").stat().st_size
    assert weights <= (run / "target_only_adapter" / "adapter_model.safetensors").stat().st_size * 2 ** 5
    assert m["final_adapter_bytes"] == sum(f.stat().st_size for f in (run / "final_adapter").iterdir())
    assert m["final_delta_bytes"] == (run / "final_delta.safetensors").stat().st_size
    assert "final_delta.safetensors" in {Path(p).name for p in result["artifacts"]}


def test_the_documented_loader_of_the_exact_delta(smoke_run):
    """The few lines the docs give, against hpctl's own reader and the run's sparsity."""
    import numpy as np
    from safetensors import safe_open

    from hpctl.integrations.peft_export import load_pruned_delta

    run, result = smoke_run
    # --- the documented snippet ---
    deltas = {}
    with safe_open(str(run / "final_delta.safetensors"), framework="pt") as f:
        for name, (n_out, n_in, transposed) in json.loads(f.metadata()["modules"]).items():
            keep = np.unpackbits(f.get_tensor(f"{name}.mask").numpy(), count=n_out * n_in).reshape(n_out, n_in)
            delta = (f.get_tensor(f"{name}.lora_B") @ f.get_tensor(f"{name}.lora_A")) * torch.from_numpy(keep)
            deltas[name] = delta.T if transposed else delta  # add to model.get_submodule(name).weight
    # --- end ---
    ours = load_pruned_delta(run / "final_delta.safetensors")
    assert set(deltas) == set(ours)
    pruned = total = 0
    for name, (fac, keep, _) in ours.items():
        assert torch.equal(deltas[name], fac.delta() * keep)
        pruned, total = pruned + int((~keep).sum()), total + keep.numel()
    assert pruned / total == pytest.approx(result["metrics"]["sparsity"], abs=1e-9)


def test_a_backbone_with_a_hub_id_is_named_by_it_and_loads_offline_from_the_hf_cache(smoke_run, tmp_path):
    """The mechanism gemma3-270m's adapters use (google/gemma-3-270m), on the tiny backbone under a test id."""
    import subprocess
    import sys

    from hpctl.plugins.grasp_lora import backbone

    run, _ = smoke_run
    local = json.loads((run / "final_adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    hf_home = tmp_path / "hf"
    adapter = tmp_path / "final_adapter"
    shutil.copytree(run / "final_adapter", adapter)
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    old = os.environ.get("HF_HOME")
    os.environ["HF_HOME"], backbone.HUB_IDS["tiny"] = str(hf_home), "hpctl-test/tiny-gemma3"
    try:
        class Model:  # what adapter_base reads of a loaded backbone
            class config:  # noqa: N801
                _name_or_path = local

        assert backbone.adapter_base("tiny", Model()) == "hpctl-test/tiny-gemma3"
        assert backbone.adapter_base("tiny", Model()) == "hpctl-test/tiny-gemma3"  # again: the cache is reused
    finally:
        del backbone.HUB_IDS["tiny"]
        if old is None:
            os.environ.pop("HF_HOME")
        else:
            os.environ["HF_HOME"] = old
    assert backbone.HUB_IDS == {"gemma3-270m": "google/gemma-3-270m"}
    repo = hf_home / "hub" / "models--hpctl-test--tiny-gemma3"
    assert (repo / "snapshots" / (repo / "refs" / "main").read_text() / "config.json").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "hpctl-test/tiny-gemma3"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    code = ("import sys, torch; from peft import AutoPeftModelForCausalLM; "
            "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); "
            "print(m.peft_config['default'].base_model_name_or_path, "
            "float(m(input_ids=torch.tensor([[2, 1000, 2000]])).logits.abs().sum()))")
    proc = subprocess.run([sys.executable, "-c", code, str(adapter)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, total = proc.stdout.split()[-2:]
    assert name == "hpctl-test/tiny-gemma3" and float(total) > 0
