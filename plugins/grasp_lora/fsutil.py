"""Moved to :mod:`hpctl.fsutil` (the Trainer integration's adapter export writes folders the
same way); re-exported here for code that imports it from the plugin."""

from hpctl.fsutil import replacing_folder

__all__ = ["replacing_folder"]
