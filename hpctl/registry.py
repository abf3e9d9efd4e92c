"""Plugins are found through the ``hpctl.plugins`` entry-point group.

An entry point may name the pip extra its plugin needs, the entry-point way::

    grasp_lora = "hpctl.plugins.grasp_lora:GraspLoraPlugin [grasp]"

Loading such a plugin without its extra is a one-line
:class:`~hpctl.extras.MissingExtraError` ("grasp_lora needs the 'grasp' extra: pip install
'hpctl[grasp]'"), checked before the plugin is imported for hpctl's own extras, and from
the import's failure for any other distribution's.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from hpctl import extras
from hpctl.errors import PluginError
from hpctl.task import Plugin

GROUP = "hpctl.plugins"


def plugin_entry_points() -> dict[str, EntryPoint]:
    """The installed plugins' entry points by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def plugin_names() -> list[str]:
    """The installed plugins' names, sorted."""
    return sorted(plugin_entry_points())


def load_plugin(name: str) -> Plugin:
    """The plugin registered as ``name``, instantiated; one-line errors when it cannot be."""
    eps = plugin_entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise PluginError(f"unknown plugin {name!r} (installed: {known})")
    ep = eps[name]
    dist = getattr(getattr(ep, "dist", None), "name", None) or "hpctl"
    if dist == "hpctl":
        for extra in ep.extras:
            if extra in extras.EXTRAS:
                extras.require(name, extra)
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken third-party plugin is reported in one line
        missing = extras.missing_for(exc, name, ep.extras[0], dist=dist) if ep.extras else None
        if missing is not None:
            raise missing from None
        raise PluginError(f"plugin {name!r} could not be loaded: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginError(f"plugin {name!r} ({eps[name].value}) is not an hpctl.task.Plugin subclass")
    return cls()
