"""Bridges from hpctl to training frameworks people already use.

Each bridge lives in its own module and is the only place that imports its framework
(nothing in the core imports transformers): :mod:`hpctl.integrations.transformers` has
the ``transformers.Trainer`` callback; the knobs it ships are framework-free modules
(:mod:`.base`: the knob interface, :mod:`.lora_prune`, :mod:`.learning_rate`). All of them
drive a :class:`hpctl.Session`.

They need the ``trainer`` extra (torch, transformers, peft, accelerate): importing any of
them without it is a one-line :class:`~hpctl.extras.MissingExtraError` naming it. The
LoRA pruning pieces (:mod:`.delta`, :mod:`.pruner`, :mod:`.peft_export`) are shared with
the grasp_lora plugin, which imports them from here (hpctl never imports a plugin).
"""

from hpctl import extras

extras.require("hpctl.integrations", "trainer")
