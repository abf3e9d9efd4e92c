"""Controllers: what learns a knob's value on a :class:`~hpctl.control_env.ControlEnv`.

``base`` (the interface, the registry, ``get_controller``), ``grpo`` (the paper's
controller), ``sb3`` (PPO, A2C, SAC, TD3; the ``sb3`` extra), ``search`` (grid, random,
fixed) and ``optuna`` (Optuna's TPE, CMA-ES and GP samplers; the ``optuna`` extra).
Nothing is imported here: ``get_controller(name)`` loads the modules when first asked.
"""
