"""Benchmark: GRASP LoRA (GRPO / PPO controller) against the 8-point grid and the target-only adapter.

Run:  python -m benchmarks.grasp_vs_grid --scale smoke|cpu|regret|regret32|gpu [--seeds 1] [--out benchmarks/results]

Two training lengths: every *fine-tune* (each grid point, every arm's final run, the
target-only adapter; ``GraspTask.fine_tune_steps``) is ``steps`` optimizer steps, GRASP's
*controller run* (the training its probes are interleaved with, ``GraspTask.total_steps``)
is ``controller_steps``, cut by the runner into rounds of ``controller_steps // (budget //
(group_size + 1))`` steps.

Per seed, on the same backbone, data split (``data_seed``), seed and step budgets:

0. **shared adapters**: the source (English) and target adapters are trained *once*
   (:class:`GraspTask` setup, saved in peft format) and every arm loads them through the
   plugin's ``source_adapter`` / ``target_adapter`` options, as a practitioner would reuse
   them. Their training time is reported once, separately, and the totals are given both
   without it and with it added to every arm (each pipeline needs the adapters once).
1. **grid**: controller ``grid`` with ``full_runs=True``, ``k`` points (default 8) evenly
   over ``[p_min, p_max]``: one whole merge-and-prune fine-tune per point, scored on dev
   (the plugin's probe measure on the dev split); the best point then goes through the
   plugin's final phase (fine-tune at that ratio, test metrics). The final phase repeats the
   winner's fine-tune bit for bit (the grid controller keeps no adapters), so the grid's
   time is also reported without that repeat.
2. **GRASP (GRPO)**: the GRPO controller interleaved with the controller run's training
   (``controller_steps``), then the final fine-tune at the learned ratio (``steps``).
3. **GRASP (PPO)**: the same with the Stable-Baselines3 PPO controller.
4. **TPE** and **random search** (``tpe``, ``random``): hpctl's Optuna TPE and random-search
   controllers at GRASP's probe budget and group size. Search controllers never train: their
   probes all score the start of training (the merged adapter), the best-scoring ratio goes
   through the same final phase (fine-tune at that ratio, test metrics).
5. **target-only**: the target adapter alone (``merge=target_only``, ratio 0: no source,
   no pruning), fine-tuned for the same steps on the same batches and tested the same way
   (controller ``fixed`` at 0; its single probe is one micro-dev forward).

Every arm is one :func:`hpctl.runner.run` (so one MLflow run, nested under a parent run
in a sqlite store next to the run folders). Reported per arm: wall time of every phase and
in total, backbone forward/backward passes and generation steps (the plugin's
``PassCounter``), the chosen/learned ratio, test metrics; then GRASP/grid time ratios in
several accountings, pass ratios, metric differences with a paired bootstrap interval over
test examples, and a cost model built from the measured phases that says how far the time
ratio is from 4x and what would move it: longer fine-tunes (the grid's points and re-run,
GRASP's final run) with the controller run and the probes kept as measured, and, separately,
the controller run growing with them.

Throughput (same process, alternating): tokens/s of the grasp_lora training loop as the
controller run executes it (``ControlEnv.advance`` rounds of the controller run's steps per
round, probe groups in between, training masks recomputed every ``mask_every`` steps, MLflow
logging and the runner's checkpoint after every round; the probes themselves are not timed)
against a plain
peft + transformers loop on a second copy of the same backbone, same batches, LoRA of the
merged adapter's rank on the same modules, AdamW, same clip: once with the usual
``labels=`` loss (logits at every position) and once with logits only at the label
positions, as the grasp loop computes them. Also the cost of one probe's prune+restore
(``GlobalMagnitudePruner.applied`` enter + exit) against its forward pass, on the micro-dev
batches (what a probe of the run costs) and on the larger test split: the prune+restore is a
fixed cost per probe while the forward grows with the examples, so the second measurement
gives the forward's cost per example and the smallest micro-dev size at which prune+restore
would be under 1 % of a probe. Only ratios measured side by side (and figures derived from
them) are reported as findings, never single absolute times.

Writes ``<out>/grasp_vs_grid_<scale>.json`` (command line, seeds, versions, configs, every
figure), ``<out>/grasp_vs_grid_<scale>.md`` and ``<out>/grasp_vs_grid_<scale>_seed<N>.png``
(grid dev score vs ratio with the controllers' ratio trajectories drawn over it). Run
folders (adapters, predictions) and the MLflow store go under ``--runs-dir``. ``--tag T`` names
the files ``grasp_vs_grid_<scale>_<T>.*`` (a language, a variant). A long benchmark runs in
parts, a seed each (``--seeds 1-1``): a part keeps the seeds of an earlier file of the same
configuration (every arm's per-question test scores are in the JSON, so the run folders need
not survive), and the report adds, over all seeds, each arm's learned ratio and regret per
seed and its test score difference to the grid pooled over every (seed, question) pair. Regret
is read twice: off the learned ratio's one final fine-tune, and off a quadratic fitted to the grid
points (the trend), with the points' scatter about it, because one fine-tune's dev loss is
chaotic in the ratio (at the regret scale two ratios 1e-7 apart differ by two thirds of the
curve's range: benchmarks/results/ratio_landscape_default_regret_same.md). With that scatter
the best of the grid's noisy points is biased low, so the report also draws what a perfect
controller (on the trend's minimum) would score against a re-run grid (``analysis.oracle_regret``):
how attainable the raw target is at all. ``--report-only`` re-summarises a committed results
file with the current analysis code and runs nothing.

Issue 36's yardstick (files measured by this code carry ``"yardstick": "seed_averaged_trend"``;
the 64-step ``regret`` files, measured before, are reported as they were): per language, over a
file's seeds, (1) each arm's learned ratio on the trend of the seed-averaged landscape (the mean
of the seeds' grid curves, its quadratic trend) as a percentage of the trend's range above its
minimum, target at most 10 % in every part; (2) the time to the final adapter (wall time less
the test generation and the final adapter's dev loss, which every arm pays alike and which are
listed apart: the search, the grid's dev scoring and re-run, and the final fine-tune stay in)
and the grid's over the arm's, as run, target at least 4.5x for GRPO in every part; (3) each
arm's test score minus the grid's and minus target-only's, paired over every (seed, question),
with a 95 % bootstrap interval (:func:`.analysis.seed_averaged`).

Issue 36's six parts (``regret32``: 32-step fine-tunes, the 16-step controller run kept), each
committed as it finishes; a part merges into its language's file
(``benchmarks/results/grasp_vs_grid_regret32_<lang>.*``)::

    python -m benchmarks.grasp_vs_grid --scale regret32 --arms grid,grpo,target-only,tpe,random --seeds 0-0 --tag ar
    python -m benchmarks.grasp_vs_grid --scale regret32 --arms grid,grpo,target-only,tpe,random --seeds 1-1 --tag ar
    python -m benchmarks.grasp_vs_grid --scale regret32 --arms grid,grpo,target-only,tpe,random --seeds 2-2 --tag ar
    python -m benchmarks.grasp_vs_grid --scale regret32 --arms grid,grpo,target-only,tpe,random --seeds 0-0 --set lang=zh --tag zh
    python -m benchmarks.grasp_vs_grid --scale regret32 --arms grid,grpo,target-only,tpe,random --seeds 1-1 --set lang=zh --tag zh
    python -m benchmarks.grasp_vs_grid --scale regret32 --arms grid,grpo,target-only,tpe,random --seeds 2-2 --set lang=zh --tag zh

Estimated wall time on an idle 2-core CPU, from the 64-step regret parts' phases (fine-tunes
halved, the grid's dev scoring, probes and test generation as measured; TPE and random each as
GRPO less its controller-run training): about 61-63 minutes per Arabic part, 51-53 per Chinese
part (grid about 29 and 25, GRPO 8.5 and 7.5, TPE and random 7.5 and 6.5 each, target-only 6.5
and 5.5, shared adapters 1.5), about 5.7 hours in all.

Scales: ``smoke`` (tiny random backbone, minutes: checks the machinery, the metrics are
meaningless), ``cpu`` (Gemma 3 270M, sizes pinned in ``CPU_SIZES``: 64-step fine-tunes, a
16-step controller run, 16 micro-dev examples, masks every 4 steps; about 45 minutes on 2
cores), ``regret`` (the cpu scale with 192 target-train questions and 300-question dev and
test sets), ``regret32`` (the same with 32-step fine-tunes), ``gpu`` (a Llama-3-8B-class
backbone with the ``full`` preset sizes, ``--device cuda --dtype bfloat16``; not run yet: no GPU was available to this project's sessions).

Modules: :mod:`.arms` (scales, the arms' run specs, running them, the shared adapters),
:mod:`.analysis` (pure: time breakdowns and ratios, the cost model, the bootstrap, summaries,
the checks), :mod:`.throughput` (the training-loop and probe-cost micro-benchmark),
:mod:`.report` (markdown, tables, plots, JSON) and :mod:`.cli` (the command line;
``__main__`` runs it).
"""
