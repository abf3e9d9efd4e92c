"""``python -m benchmarks.grasp_vs_grid``: see :mod:`benchmarks.grasp_vs_grid.cli`."""

from .cli import main

raise SystemExit(main())
