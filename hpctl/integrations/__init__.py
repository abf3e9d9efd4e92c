"""Bridges from hpctl to training frameworks people already use.

Each bridge lives in its own module and is the only place that imports its framework
(nothing in the core imports transformers): :mod:`hpctl.integrations.transformers` has
the ``transformers.Trainer`` callback; the knobs it ships are framework-free modules
(:mod:`.base`: the knob interface, :mod:`.lora_prune`, :mod:`.learning_rate`). All of them
drive a :class:`hpctl.Session`.
"""
