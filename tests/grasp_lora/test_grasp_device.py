"""grasp_lora --device / --dtype: one-line errors before anything loads, a bfloat16 smoke run on the CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# peft 0.21 calls a transformers 5.x API that warns on every PeftModel.from_pretrained
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

from hpctl.errors import ConfigError  # noqa: E402
from hpctl.plugins.grasp_lora import GraspLoraConfig, GraspLoraPlugin, resolve_config  # noqa: E402
from hpctl.plugins.grasp_lora import backbone as backbone_module  # noqa: E402
from hpctl.plugins.grasp_lora import task as task_module  # noqa: E402
from hpctl.plugins.grasp_lora.backbone import load_backbone, resolve_device, resolve_dtype  # noqa: E402
from hpctl.plugins.grasp_lora.delta import DeltaLinear  # noqa: E402
from hpctl.plugins.grasp_lora.lm import collate  # noqa: E402
from hpctl.plugins.grasp_lora.lora import LowRank  # noqa: E402

SMOKE = ["run", "grasp_lora", "--preset", "smoke"]
NO_CUDA = not torch.cuda.is_available()


def _one_line(code: int, out: str, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, err
    assert "Traceback" not in err + out
    return lines[0]


def test_factors_stay_float32_on_a_bfloat16_layer():
    """float32 master factors (and so float32 AdamW state) whatever the backbone's dtype."""
    base = torch.nn.Linear(4, 3).to(torch.bfloat16)
    wrapped = DeltaLinear(base, LowRank(torch.zeros(2, 4), torch.zeros(3, 2), 1.0))
    assert wrapped.lora_A.dtype == wrapped.lora_B.dtype == torch.float32


def test_dtype_and_device_names():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_device("cpu") == torch.device("cpu")
    for bad, match in (("float64", "unknown dtype 'float64'"), ("int8", "unknown dtype")):
        with pytest.raises(ConfigError, match=match) as err:
            resolve_dtype(bad)
        assert "\n" not in str(err.value)
    for bad in ("gpu", "cpu:1", "mps:2", "cuda:x", ""):
        with pytest.raises(ConfigError, match="unknown device") as err:
            resolve_device(bad)
        assert "\n" not in str(err.value) and "cuda:N" in str(err.value)


def test_dtype_auto_is_bfloat16_only_where_the_hardware_computes_it(monkeypatch):
    """The default and full presets ask for ``auto``; the resolved config records what runs."""
    from hpctl.plugins.grasp_lora import PRESETS

    assert all(p.get("dtype") for p in PRESETS.values())  # resolve_config leaves an unset dtype to the preset
    here = backbone_module.auto_dtype("cpu")
    assert here == ("bfloat16" if backbone_module.native_bf16("cpu") else "float32")
    assert resolve_config(GraspLoraConfig()).dtype == here
    assert resolve_config(GraspLoraConfig(preset="smoke")).dtype == "float32"  # tests stay float32
    assert resolve_config(GraspLoraConfig(dtype="float32")).dtype == "float32"  # an explicit choice wins
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(backbone_module, "native_bf16", lambda device="cpu", _n=native: _n)
        assert backbone_module.auto_dtype("cpu") == expected
        assert resolve_config(GraspLoraConfig(preset="full")).dtype == expected
        assert resolve_config(GraspLoraConfig(preset="smoke", dtype="auto")).dtype == expected
    monkeypatch.undo()
    assert not backbone_module.native_bf16("mps") and not backbone_module.native_bf16("not-a-device")
    with pytest.raises(ConfigError, match="unknown dtype 'float64'"):
        GraspLoraConfig(dtype="float64")


@pytest.mark.slow
def test_cli_dtype_auto_is_recorded_and_eval_scores_in_it(hpctl_main, tmp_path, monkeypatch):
    """``auto`` ran as bfloat16 (mocked hardware support); ``hpctl eval`` on a machine where ``auto``
    would mean float32 still scores in bfloat16, the dtype result.json records, unless told otherwise."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(backbone_module, "native_bf16", lambda device="cpu": True)
    # no target-only baseline and 2-step fine-tunes: bfloat16 matmuls are slow on a CPU without them
    code, out, err = hpctl_main(*SMOKE, "--dtype", "auto", "--budget", "5", "--baseline", "none", "--steps", "2",
                                "--out", "run", "--json")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["plugin_config"]["dtype"] == "auto"  # asked
    assert result["plugin_config"]["dtype"] == "bfloat16"  # ran

    monkeypatch.setattr(backbone_module, "native_bf16", lambda device="cpu": False)
    assert backbone_module.auto_dtype("cpu") == "float32"
    loaded = []
    real_load = backbone_module.load_backbone

    def recording_load(*args, **kwargs):
        loaded.append(kwargs["dtype"])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(backbone_module, "load_backbone", recording_load)
    data = tmp_path / "mini.json"
    data.write_text(json.dumps({"version": "1", "data": [{"title": "t", "paragraphs": [{
        "context": "باريس هي عاصمة فرنسا.", "qas": [{"id": "q1", "question": "ما هي عاصمة فرنسا؟",
                                                   "answers": [{"text": "باريس", "answer_start": 0}]}]}]}]},
                               ensure_ascii=False), encoding="utf-8")
    for extra, expected in (((), torch.bfloat16), (("-o", "dtype=float32"), torch.float32)):
        code, out, err = hpctl_main("eval", "run", "--data", str(data), "--json", *extra)
        assert code == 0, err
        assert loaded[-1] == expected
        assert np.isfinite(json.loads(out.strip().splitlines()[-1])["loss"])


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_unavailable_device_is_a_config_error_before_loading(tmp_path, monkeypatch, device):
    def no_loading(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the device was checked")

    monkeypatch.setattr(task_module, "load_backbone", no_loading)
    with pytest.raises(ConfigError, match=f"device '{device}' is not available") as err:
        GraspLoraPlugin().make_task(GraspLoraConfig(preset="smoke", device=device), seed=0, out_dir=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown dtype"):
        GraspLoraPlugin().make_task(GraspLoraConfig(preset="smoke", dtype="float64"), seed=0, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="not available"):
        load_backbone("tiny", device=device)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_cli_unavailable_device_one_line(hpctl_main, monkeypatch):
    monkeypatch.setattr(task_module, "load_backbone", lambda *a, **k: pytest.fail("loaded before the device check"))
    line = _one_line(*hpctl_main(*SMOKE, "--device", "cuda"))
    assert "device 'cuda' is not available" in line, line


@pytest.mark.parametrize("extra, message", [
    (["--dtype", "float64"], "float64"),
    (["--device", "gpu"], "unknown device 'gpu'"),
])
def test_cli_bad_dtype_or_device_one_line(hpctl_main, extra, message):
    line = _one_line(*hpctl_main(*SMOKE, *extra))
    assert message in line, line


@pytest.mark.slow
def test_bfloat16_smoke_run_on_cpu(tmp_path):
    plugin = GraspLoraPlugin()
    task = plugin.make_task(GraspLoraConfig(preset="smoke", dtype="bfloat16"), seed=0, out_dir=tmp_path)
    task.reset(0)
    fresh, tok, _ = load_backbone("tiny", dtype="bfloat16")
    frozen = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    assert {p.dtype for p in task.backbone_parameters().values()} == {torch.bfloat16}
    # float32 master weights: the trainable factors and so the AdamW state
    assert {p.dtype for p in task.adapter.parameters()} == {torch.float32}

    assert np.isfinite(task.train(2, np.array([0.3])))
    before = task.snapshot()
    scores = [task.probe(np.array([r])) for r in (0.0, 0.45, 0.9)]
    assert all(np.isfinite(scores))
    after = task.snapshot()
    for k, v in before["adapter"].items():
        assert torch.equal(v, after["adapter"][k]), k  # a bf16 probe leaves the state untouched too

    metrics = task.finish(np.array([0.4]))
    for key in ("f1", "loss", "score", "sparsity", "final_train_loss", "target_only_loss"):
        assert np.isfinite(metrics[key]), key
    assert metrics["sparsity"] == pytest.approx(0.4, abs=1e-3)
    for name, p in task.backbone_parameters().items():  # never written, never cast
        assert p.dtype == torch.bfloat16 and torch.equal(p, frozen[name]), name

    # the saved adapter scores with `hpctl eval`'s path, in the run's dtype (the keys it always had)
    data = {"version": "1", "data": [{"title": "t", "paragraphs": [{
        "context": "باريس هي عاصمة فرنسا.",
        "qas": [{"id": "q1", "question": "ما هي عاصمة فرنسا؟", "answers": [{"text": "باريس", "answer_start": 0}]}]}]}]}
    (tmp_path / "mini.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    scored = plugin.eval_run(Path(tmp_path), GraspLoraConfig(preset="smoke", dtype="bfloat16"),
                             data=str(tmp_path / "mini.json"))
    assert scored["examples"] == 1.0 and np.isfinite(scored["loss"]) and "f1" in scored and "score" not in scored

    # a backbone handed in must already be in the config's dtype
    other = plugin.make_task(GraspLoraConfig(preset="smoke"), seed=0, out_dir=tmp_path / "other",
                             backbone=(fresh, tok, "tiny bf16"))
    with pytest.raises(ConfigError, match="given backbone is bfloat16"):
        other.reset(0)


def test_batches_move_to_the_model_device():
    from hpctl.plugins.grasp_lora.lm import Encoded

    batch = collate([Encoded(ids=(2, 5, 6, 1), n_prompt=2)], pad_id=0)
    assert batch.to("cpu") is batch  # no copy where it already is
    assert batch.input_ids.device.type == "cpu"
