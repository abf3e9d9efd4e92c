"""The dense-delta wrappers moved to :mod:`hpctl.integrations.delta` (the Trainer
integration shares them, and hpctl never imports a plugin); re-exported here for code that
imports them from the plugin."""

from hpctl.integrations.delta import DeltaAdapter, DeltaLinear, LowRank, _MaskedDeltaLinear, merged_into_copies

__all__ = ["DeltaAdapter", "DeltaLinear", "LowRank", "_MaskedDeltaLinear", "merged_into_copies"]
