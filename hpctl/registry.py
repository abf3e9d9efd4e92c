"""Plugins are found through the ``hpctl.plugins`` entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from hpctl.errors import PluginError
from hpctl.task import Plugin

GROUP = "hpctl.plugins"


def plugin_entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def plugin_names() -> list[str]:
    return sorted(plugin_entry_points())


def load_plugin(name: str) -> Plugin:
    eps = plugin_entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise PluginError(f"unknown plugin {name!r} (installed: {known})")
    try:
        cls = eps[name].load()
    except Exception as exc:  # noqa: BLE001 - a broken third-party plugin is reported in one line
        raise PluginError(f"plugin {name!r} could not be loaded: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginError(f"plugin {name!r} ({eps[name].value}) is not an hpctl.task.Plugin subclass")
    return cls()
