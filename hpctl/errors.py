"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class HpctlError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class ConfigError(HpctlError):
    """A bad flag, config file, knob value or bound."""


class DataError(HpctlError):
    """A missing, empty or malformed data file."""


class PluginError(HpctlError):
    """An unknown plugin or a plugin that cannot be loaded."""


class ResumeError(HpctlError):
    """`--resume` on a directory that is not a resumable run of this command."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, Slurm, Kubernetes), raised like Ctrl-C so a run ends
    the same way: its MLflow run KILLED, its last checkpoint kept for ``--resume``."""


def one_line(exc: BaseException, *, with_type: bool = True) -> str:
    """``"Type: first line of the message"``: how an unexpected error is shown to a user."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters: user input echoed in an error stays one short line."""
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."
