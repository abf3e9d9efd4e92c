"""Global magnitude pruning moved to :mod:`hpctl.integrations.pruner` (the Trainer
integration shares it, and hpctl never imports a plugin); re-exported here for code that
imports it from the plugin."""

from hpctl.integrations.pruner import GlobalMagnitudePruner, Threshold

__all__ = ["GlobalMagnitudePruner", "Threshold"]
