"""Compare controllers on the synthetic landscape from Python: grpo, ppo, random, grid, 2 seeds.

Run:  python examples/compare_controllers.py [--budget 64] [--out runs/my-compare]

The same as ``hpctl compare synthetic --controllers grpo,ppo,random,grid --seeds 2
--optimum 0.37 --noise 0.01``: every (controller, seed) is an ordinary run nested under one
parent MLflow run, and the summary table gives the median [IQR] over seeds of the learned
value, the primary metric and the distance to the known optimum.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from hpctl.compare import compare, summary_table
from hpctl.config import RunOptions

CONTROLLERS = ["grpo", "ppo", "random", "grid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=64, help="probes per run")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per controller")
    parser.add_argument("--out", default=None, help="output folder (default runs/compare-synthetic-<time>)")
    args = parser.parse_args()

    landscape = {"optimum": 0.37, "noise": 0.01, "shape": "peaked"}  # the synthetic plugin's options
    result = compare("synthetic", CONTROLLERS, args.seeds, RunOptions(seed=0, budget=args.budget), landscape,
                     out=args.out)
    Console().print(summary_table(result))
    for ctrl, summary in result["summary"].items():
        print(f"{ctrl}: learned x = {summary['learned']['x']['median']:.3f}, "
              f"distance to optimum = {summary['distance']['median']:.3f}")
    print(f"results in {result['out_dir']}/compare.json")


if __name__ == "__main__":
    main()
