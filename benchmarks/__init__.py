"""Benchmarks of hpctl, run from the repository root: ``python -m benchmarks.grasp_vs_grid`` and
``python benchmarks/controllers.py``; their results are under ``benchmarks/results/``."""
