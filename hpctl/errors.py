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
