"""hpctl: treat a training hyperparameter as a control variable learned online by RL.

Core pieces: :class:`~hpctl.knob.Knob` (a bounded control variable),
:class:`~hpctl.task.Task`/:class:`~hpctl.task.Plugin` (what a training loop implements),
:class:`~hpctl.control_env.ControlEnv` (the Gymnasium environment over a task),
:class:`~hpctl.session.Session` (ask/tell from your own training loop), controllers in
:mod:`hpctl.controllers`, MLflow tracking in :mod:`hpctl.tracking`, the CLI in :mod:`hpctl.cli`.
"""

from hpctl.control_env import ControlEnv
from hpctl.errors import ConfigError, DataError, HpctlError
from hpctl.knob import Knob
from hpctl.session import Session, Trial
from hpctl.task import Plugin, Task

# registers the Gymnasium ids (hpctl/Landscape-v0, hpctl/MagnitudePrune-v0, ...); their entry
# points are strings, so this imports no torch
from hpctl import envs  # noqa: E402,F401  isort: skip

__version__ = "0.1.0"

__all__ = ["ControlEnv", "ConfigError", "DataError", "HpctlError", "Knob", "Plugin", "Session", "Task", "Trial", "__version__"]
