"""Registered Gymnasium ids: ``import hpctl`` registers them without torch, and the real
plugins' environments are what ``hpctl run`` builds, pass the env checker and train SB3.

The ``grasp_lora`` ids are checked in tests/grasp_lora/test_grasp_task.py (they reuse its
trained smoke adapters).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import hpctl
from hpctl.envs import LANDSCAPE_IDS, PLUGIN_IDS, env_ids
from hpctl.errors import ConfigError
from hpctl.runner import steps_per_round

#: a short training run: the checks below take a fraction of a second each
SHORT = {"total_steps": 40}


def test_import_hpctl_registers_every_id_without_torch():
    code = ("import json, sys, gymnasium as gym, hpctl\n"
            "from gymnasium.envs.registration import registry\n"
            "ids = [i for i in registry if i.startswith('hpctl/')]\n"
            "envs = {i: type(gym.make(i).unwrapped).__name__ for i in " + repr(sorted(LANDSCAPE_IDS)) + "}\n"
            "print(json.dumps({'ids': ids, 'envs': envs, 'torch': 'torch' in sys.modules}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["ids"]) == sorted(env_ids())
    assert set(PLUGIN_IDS) <= set(out["ids"])
    assert out["envs"] == {i: "ControlEnv" for i in LANDSCAPE_IDS}
    assert out["torch"] is False  # neither importing hpctl nor making a landscape env imports torch


def test_magnitude_prune_id_is_the_env_hpctl_run_builds():
    env = gym.make("hpctl/MagnitudePrune-v0", seed=3, budget=18, group_size=4, hidden=16, **SHORT)
    base = env.unwrapped
    assert isinstance(base, hpctl.ControlEnv)
    assert base.task.knob.name == "prune_ratio" and base.task.sizes == [64, 16, 16, 10]
    assert base.group_size == 4 and base.task.total_steps == 40
    assert base.steps_per_round == steps_per_round(40, 18, 4)  # as `hpctl run --budget 18 --group-size 4`
    env.close()


def test_magnitude_prune_id_passes_the_env_checker():
    env = gym.make("hpctl/MagnitudePrune-v0", **SHORT)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_sb3_ppo_trains_on_the_registered_id_directly():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    env = gym.make("hpctl/MagnitudePrune-v0", **SHORT)
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.learn(16)
    base = env.unwrapped
    assert base.probes >= 16  # every SB3 step probed a ratio (plus the guard's baseline probes)
    assert base.steps_done > 0  # and the env trained rounds in between
    action, _ = model.predict(base.observe()[0], deterministic=True)
    assert env.action_space.contains(np.clip(action, env.action_space.low, env.action_space.high))
    env.close()


def test_sb3_through_the_unit_action_wrapper():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from hpctl.controllers.sb3 import UnitActionWrapper

    env = UnitActionWrapper(gym.make("hpctl/MagnitudePrune-v0", **SHORT))
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    seen = []
    env.unwrapped.listeners.append(lambda e: seen.append(float(e["value"][0])) if e["event"] == "probe" else None)
    PPO("MlpPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu").learn(16)
    assert len(seen) >= 16
    assert all(0.0 <= v <= 0.95 for v in seen)  # [-1, 1] mapped onto the knob's range [0, 0.95]
    env.close()


def test_bad_plugin_option_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="has no option 'hiden'") as info:
        gym.make("hpctl/MagnitudePrune-v0", hiden=3)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"total_steps .*must be between 1 and"):
        gym.make("hpctl/MagnitudePrune-v0", total_steps=0)


def test_default_out_dir_is_temporary_and_a_given_one_is_used(tmp_path):
    env = gym.make("hpctl/MagnitudePrune-v0", **SHORT)
    out = env.unwrapped.task.out_dir
    assert out is not None and out.is_dir()
    env.close()
    del env
    gc.collect()
    assert not out.exists()  # removed with the env

    given = tmp_path / "mp"
    env = gym.make("hpctl/MagnitudePrune-v0", out_dir=given, **SHORT)
    assert env.unwrapped.task.out_dir == Path(given) and given.is_dir()
    env.close()
