"""The ``hpctl`` command line (click + rich).

``hpctl list``, ``hpctl run PLUGIN ...``, ``hpctl compare PLUGIN ...`` and plugin
commands such as ``hpctl eval``. Every user error is one line on stderr and exit code 2;
a crash inside a run is one line too (the traceback goes to ``error.txt`` in the run
directory, and the MLflow run is marked FAILED).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from hpctl.control_env import COMMIT_RULES, REWARDS
from hpctl.controllers.base import BUILTIN_CONTROLLERS
from hpctl.engines import ENGINE_KEYS, ENGINES
from hpctl.config import COMMON_KEYS, COMPARE_KEYS, parse_value, RunOptions, field_type, load_yaml, split_config
from hpctl.console import RunProgress, make_console, print_result
from hpctl.errors import ConfigError, HpctlError, Terminated, one_line, shorten

#: an error message is one line a person reads: user input echoed in it is cut to fit
MAX_ERROR_CHARS = 600

#: the run options that are also flags (controller settings come through --set and the file)
COMMON_FLAGS = tuple(k for k in COMMON_KEYS if k != "controller_config")


# --------------------------------------------------------------------- options --
#: the headings of `--help`, in order (a plugin's own options come last, under its name)
RUN_GROUP, CONTROLLER_GROUP, OUTPUT_GROUP, ENGINE_GROUP = "Run", "Controller", "Output and tracking", "Engine"
GROUP_ORDER = (RUN_GROUP, CONTROLLER_GROUP, OUTPUT_GROUP, ENGINE_GROUP)


def option(*decls: str, group: str, **kwargs: Any) -> click.Option:
    """A click option that `--help` lists under the heading ``group``."""
    opt = click.Option(list(decls), **kwargs)
    opt.hpctl_group = group  # type: ignore[attr-defined]
    return opt


class GroupedCommand(click.Command):
    """A command whose `--help` lists its options under headings (run, controller, output,
    engine, the plugin's own), in plain click: ``format_options`` writes one section per group."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            group = getattr(param, "hpctl_group", None) or RUN_GROUP  # --help and anything untagged
            groups.setdefault(group, []).append(record)
        order = [g for g in GROUP_ORDER if g in groups] + [g for g in groups if g not in GROUP_ORDER]
        for group in order:
            with formatter.section(group + " options" if group in GROUP_ORDER else group):
                formatter.write_dl(groups[group])


def renamed(decls: list[str], message: str) -> click.Option:
    """A hidden option under an old spelling: typing it is the one-line error ``message``,
    which names the new spelling."""

    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:
            raise ConfigError(message)

    name = "renamed_" + decls[0].lstrip("-").replace("-", "_")
    return click.Option([*decls, name], hidden=True, expose_value=False, callback=refuse, is_eager=True)


def plugin_options(config_cls: type, preset_defaults: dict[str, Any] | None = None,
                   group: str | None = None) -> list[click.Option]:
    """CLI options from a plugin's Config dataclass; defaults stay None so files can fill them.

    An option left to the plugin's preset shows the default preset's value in its help;
    ``group`` is the `--help` heading they are listed under.
    """
    hints = typing.get_type_hints(config_cls)
    preset_defaults = preset_defaults or {}
    out = []
    for f in dataclasses.fields(config_cls):
        base, _ = field_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None:
            help_text += f" [default: {default}]"
        elif f.name in preset_defaults:
            help_text += f" [default: {preset_defaults[f.name]} (the default preset's)]"
        choices = f.metadata.get("choices")
        if base is bool:
            out.append(option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=help_text,
                              group=group))
        else:
            ctype = click.Choice([str(c) for c in choices]) if choices else {int: int, float: float}.get(base, str)
            out.append(option(flag, f.name, default=None, type=ctype, help=help_text, group=group))
    return out


def parse_sets(sets: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"expected KEY=VALUE, got {shorten(repr(item))}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v, what=k.strip())
    return out


def compose(ctx: click.Context, plugin, kwargs: dict[str, Any]) -> tuple[RunOptions, dict[str, Any]]:
    """Config file first, then flags the user actually typed."""
    file_common: dict[str, Any] = {}
    file_plugin: dict[str, Any] = {}
    if kwargs.get("config_file"):
        data = load_yaml(kwargs["config_file"])
        file_common, file_plugin = split_config(data, plugin.Config, source=kwargs["config_file"])
    common = {k: v for k, v in file_common.items() if k not in COMPARE_KEYS}
    ctx.meta["hpctl.compare_file"] = {k: v for k, v in file_common.items() if k in COMPARE_KEYS}
    for key in COMMON_FLAGS:
        if key not in kwargs:  # a flag this command does not take (compare's --seeds replaces --seed)
            continue
        typed = ctx.get_parameter_source(key) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        if typed or key not in common:
            common[key] = kwargs.get(key)
    ctrl_cfg = dict(common.get("controller_config") or {})
    ctrl_cfg.update(parse_sets(kwargs.get("sets") or ()))
    common["controller_config"] = ctrl_cfg
    opts = RunOptions(**common)
    plugin_cfg = dict(file_plugin)
    for f in dataclasses.fields(plugin.Config):
        if kwargs.get(f.name) is not None:
            plugin_cfg[f.name] = kwargs[f.name]
    return opts, plugin_cfg


# ------------------------------------------------------------------- progress --
# ----------------------------------------------------------------------- group --
class PluginCommands(click.Group):
    """`hpctl run PLUGIN` / `hpctl compare PLUGIN`: one subcommand per installed plugin."""

    def __init__(self, *args, builder=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.builder = builder

    def list_commands(self, ctx: click.Context) -> list[str]:
        from hpctl.registry import plugin_names

        return plugin_names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from hpctl.registry import load_plugin

        plugin = load_plugin(name)  # raises PluginError: one line
        return self.builder(plugin)


def build_run_command(plugin) -> click.Command:
    @click.pass_context
    def callback(ctx: click.Context, **kwargs: Any) -> None:
        from hpctl.rundir import RunSpec, read_spec
        from hpctl.runner import run as run_one

        resume = kwargs.pop("resume", None)
        if resume:
            typed = [p.name for p in ctx.command.params if p.name not in ("resume", "as_json", "overwrite")
                     and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
            if [k for k in typed if k not in ENGINE_KEYS]:
                bad = [k for k in typed if k not in ENGINE_KEYS][0]
                flag = next(p.opts[0] for p in ctx.command.params if p.name == bad)  # as typed: --config, not config_file
                raise ConfigError(f"--resume continues a run exactly as it was started; drop {flag}")
            spec = read_spec(resume)
            if spec.plugin != plugin.name or spec.command != "run":
                raise ConfigError(f"--resume {resume!r} belongs to `{spec.command} {spec.plugin}`, not `run {plugin.name}`")
            if typed:  # where it runs may change (the results do not): engine flags replace the run's
                spec = dataclasses.replace(spec, options=dataclasses.replace(
                    spec.options, **{k: kwargs.get(k) for k in ENGINE_KEYS}))
        else:
            opts, plugin_cfg = compose(ctx, plugin, kwargs)
            spec = RunSpec(plugin=plugin.name, options=opts, plugin_config=plugin_cfg)
        with RunProgress(f"{plugin.name}/{spec.options.controller or plugin.default_controller}") as bar:
            result = run_one(spec, progress=bar, resume_dir=resume, overwrite=kwargs.get("overwrite", False))
        print_result(result, kwargs.get("as_json", False))

    cmd = GroupedCommand(plugin.name, callback=callback, help=plugin.description,
                         params=plugin_options(plugin.Config, plugin.preset_defaults, group=f"{plugin.name} options"))
    cmd = common_run_options(cmd, plugin)
    cmd = engine_run_options(cmd, probe_workers=True)
    cmd.params.append(option("--resume", default=None, type=click.Path(exists=True, file_okay=False),
                             help="continue the run in this directory", group=RUN_GROUP))
    cmd.params.append(option("--overwrite", is_flag=True, help="replace the run already in --out (refused otherwise)",
                             group=OUTPUT_GROUP))
    return cmd


def common_run_options(cmd: click.Command, plugin, *, compare: bool = False) -> click.Command:
    """Append the options every `hpctl run PLUGIN` takes (`hpctl compare`: all but --controller
    and --seed, which --controllers and --seeds replace), with the plugin's true defaults."""
    opts = []
    if not compare:
        opts += [
            option("--controller", "-c", default=None, type=click.Choice(BUILTIN_CONTROLLERS),
                   help=f"controller [default: {plugin.default_controller}]", group=CONTROLLER_GROUP),
            option("--seed", default=0, show_default=True, type=int, help="random seed", group=RUN_GROUP),
        ]
    opts += [
        option("--budget", default=None, type=int,
               help="the most probes the controller may spend; rounds are spent whole, so a controller may stop "
                    f"a few below it (result: probes) [default: {plugin.default_budget}]", group=CONTROLLER_GROUP),
        option("--group-size", default=None, type=int,
               help=f"probes per round at the same training state [default: {plugin.default_group_size}]",
               group=CONTROLLER_GROUP),
        option("--commit-rule", default="best", show_default=True, type=click.Choice(COMMIT_RULES),
               help="which value training continues with after a round of step() probes", group=CONTROLLER_GROUP),
        option("--reward", default="score", show_default=True, type=click.Choice(REWARDS),
               help="reward of a step(): the probe score or its improvement over the current value",
               group=CONTROLLER_GROUP),
        option("--config", "config_file", default=None, type=click.Path(exists=True, dir_okay=False),
               help="YAML config file (flags win)", group=RUN_GROUP),
        option("--set", "sets", multiple=True, metavar="KEY=VALUE",
               help=("controller setting, CONTROLLER.KEY=VALUE: e.g. --set grid.k=4 or --set grpo.policy_lr=0.3 "
                     "(a plain KEY when --controllers names one; repeatable)" if compare else
                     "controller setting, e.g. --set policy_lr=0.3 (GRPO's step size; --lr, where a plugin has "
                     "it, is its optimizer's), or --set grid.k=4 for one controller (repeatable)"),
               group=CONTROLLER_GROUP),
        option("--warm-start", default=None, metavar="RUN_DIR",
               help="start the controller from a finished run's saved state (its controller_state.json)",
               group=CONTROLLER_GROUP),
        option("--out", default=None, group=OUTPUT_GROUP,
               help=(f"comparison directory, a folder per trial inside [default: runs/compare-{plugin.name}-<time>]"
                     if compare else
                     f"run directory [default: runs/{plugin.name}-<controller>-s<seed>-<time>, named after the "
                     "controller that runs]")),
        option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI", group=OUTPUT_GROUP,
               help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db in the "
                    "working directory]"),
        option("--json", "as_json", is_flag=True, help="print the result as one JSON line at the end",
               group=OUTPUT_GROUP),
    ]
    cmd.params.extend(opts)
    return cmd


def engine_run_options(cmd: click.Command, *, probe_workers: bool) -> click.Command:
    """Append the engine options (see :mod:`hpctl.engines`)."""
    cmd.params.extend([
        option("--engine", default="local", show_default=True, type=click.Choice(ENGINES), group=ENGINE_GROUP,
               help="where trials, grid points and probe groups run: this process, or Ray tasks and actors"),
        option("--address", default=None, group=ENGINE_GROUP,
               help="Ray cluster to join: auto, or HOST[:PORT] of its head [default: a local Ray instance]"),
        option("--cpus-per-trial", default=None, type=float, help="CPUs each Ray task or actor reserves [default: 1]",
               group=ENGINE_GROUP),
        option("--gpus-per-trial", default=None, type=float, help="GPUs each Ray task or actor reserves [default: 0]",
               group=ENGINE_GROUP),
    ])
    if probe_workers:
        cmd.params.append(option("--probe-workers", default=None, type=int, group=ENGINE_GROUP,
                                 help="score each probe group on N Ray actors holding replicas of the task "
                                      "[default: none, probes run in the run's own process]"))
    return cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpctl")
def cli() -> None:
    """hpctl: learn a training hyperparameter online with reinforcement learning."""


cli.add_command(PluginCommands("run", builder=build_run_command,
                               help="Learn a plugin's knob with a controller: hpctl run PLUGIN [OPTIONS]"))


def _compare_bars():
    """``(on_run, close)``: one progress bar per trial of a comparison, the previous one closed."""
    bars: list[RunProgress] = []

    def on_run(ctrl: str, seed: int) -> RunProgress:
        while bars:
            bars.pop().__exit__(None, None, None)
        bar = RunProgress(f"{ctrl} seed {seed}").__enter__()
        bars.append(bar)
        return bar

    def close() -> None:
        while bars:
            bars.pop().__exit__(None, None, None)

    return on_run, close


def _print_comparison(result: dict[str, Any], as_json: bool) -> None:
    from hpctl.compare import summary_table

    console = make_console(stderr=as_json)
    console.print(summary_table(result))
    for f in result.get("failures", []):
        console.print(f"[red]failed[/red]: {f['controller']} seed {f['seed']}: {f['error']} ({f['out_dir']})")
    console.print(f"compare.json, compare.png in {result['out_dir']}; MLflow parent run {result['mlflow_run_id']}")
    if as_json:
        click.echo(json.dumps(result, default=str))


def _resume_comparison(ctx: click.Context, resume: str, plugin_name: str | None, kwargs: dict[str, Any]) -> None:
    """``hpctl compare [PLUGIN] --resume DIR``: only the engine flags (where trials run) and --json may go with it."""
    from hpctl.compare import resume_compare
    from hpctl.rundir import read_spec

    typed = [p for p in ctx.command.params if p.name not in ("resume", "as_json") and p.expose_value
             and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    bad = [p for p in typed if p.name not in ENGINE_KEYS]
    if bad:
        raise ConfigError(f"--resume continues a comparison exactly as it was started; drop {bad[0].opts[0]}")
    spec = read_spec(resume)
    if spec.command != "compare":
        raise ConfigError(f"--resume {resume!r} belongs to `{spec.command} {spec.plugin}`, not `compare` "
                          f"(resume it with hpctl {spec.command} {spec.plugin} --resume {resume})")
    if plugin_name is not None and spec.plugin != plugin_name:
        raise ConfigError(f"--resume {resume!r} belongs to `compare {spec.plugin}`, not `compare {plugin_name}`")
    on_run, close = _compare_bars()
    try:
        result = resume_compare(resume, on_run=on_run,
                                engine_settings={p.name: kwargs.get(p.name) for p in typed if p.name in ENGINE_KEYS})
    finally:
        close()
    _print_comparison(result, bool(kwargs.get("as_json")))


def build_compare_command(plugin) -> click.Command:
    @click.pass_context
    def callback(ctx: click.Context, **kwargs: Any) -> None:
        from hpctl.compare import compare

        resume = kwargs.pop("resume", None)
        if resume:
            _resume_comparison(ctx, resume, plugin.name, kwargs)
            return
        controllers, seeds = kwargs.pop("controllers"), kwargs.pop("seeds")
        opts, plugin_cfg = compose(ctx, plugin, kwargs)
        from_file = ctx.meta.get("hpctl.compare_file", {})
        if ctx.get_parameter_source("controllers") != ParameterSource.COMMANDLINE and "controllers" in from_file:
            controllers = from_file["controllers"]
        if ctx.get_parameter_source("seeds") != ParameterSource.COMMANDLINE and "seeds" in from_file:
            seeds = from_file["seeds"]
        if isinstance(controllers, str):
            controllers = controllers.split(",")
        controllers = [str(c).strip() for c in controllers if str(c).strip()]
        first, seeds = parse_seeds(seeds, opts.seed)
        opts = dataclasses.replace(opts, seed=first)
        if len(controllers) == 1 and opts.controller is None:  # a plain --set is for the one controller compared
            opts = dataclasses.replace(opts, controller=controllers[0])
        on_run, close = _compare_bars()
        try:
            result = compare(plugin.name, controllers, seeds, opts, plugin_cfg, out=opts.out, on_run=on_run)
        finally:
            close()
        _print_comparison(result, bool(kwargs.get("as_json")))

    cmd = GroupedCommand(plugin.name, callback=callback, help=f"Compare controllers on {plugin.name}",
                         params=plugin_options(plugin.Config, plugin.preset_defaults, group=f"{plugin.name} options"))
    cmd.params += [
        option("--controllers", default="grpo,ppo,grid", show_default=True, group=CONTROLLER_GROUP,
               help="comma-separated controller names"),
        option("--seeds", default="3", show_default=True, metavar="N|A..B", group=RUN_GROUP,
               help="seeds per controller: N runs seeds 0..N-1 (from the config file's seed, if it has one); "
                    "A..B runs seeds A to B"),
    ]
    cmd = common_run_options(cmd, plugin, compare=True)
    cmd = engine_run_options(cmd, probe_workers=False)
    cmd.params.append(option("--resume", default=None, type=click.Path(exists=True, file_okay=False),
                             help="finish the comparison in this directory (killed, or SIGKILLed)", group=RUN_GROUP))
    cmd.params += [
        renamed(["--controller", "-c"], "hpctl compare takes no --controller/-c: --controllers names the "
                                        "controllers (e.g. --controllers grpo,random), and a --set setting "
                                        "for one of them is written CONTROLLER.KEY (e.g. --set grid.k=4)"),
        renamed(["--seed"], "hpctl compare takes no --seed: --seeds A..B names the seeds (e.g. --seeds 3..5 runs "
                            "seeds 3, 4 and 5), --seeds N runs seeds 0..N-1"),
    ]
    return cmd


def parse_seeds(value: Any, first: int) -> tuple[int, int]:
    """``--seeds`` (or the config file's ``seeds``) as (first seed, how many): ``N`` is N
    seeds from ``first``, ``A..B`` the seeds A to B."""
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"seeds must be a count N or a range A..B, got {shorten(repr(value))}")
    if "." in text:
        lo, sep, hi = text.partition("..")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            a, b = int(lo), int(hi)
            if b < a:
                raise ConfigError(f"--seeds {text}: the range runs backwards (write {b}..{a})")
            return a, b - a + 1
    elif text.isdigit():
        n = int(text)
        if n < 1:
            raise ConfigError(f"--seeds must be >= 1, got {n}")
        return first, n
    raise ConfigError(f"--seeds must be a count N or a range A..B (e.g. 3 or 10..12), got {shorten(repr(value))}")


@click.pass_context
def _compare_group(ctx: click.Context, resume: str | None, as_json: bool) -> None:
    if ctx.invoked_subcommand is not None:
        if resume or as_json:
            raise ConfigError(f"put {'--resume' if resume else '--json'} after the plugin "
                              f"(hpctl compare {ctx.invoked_subcommand} ...), or give --resume DIR alone")
        return
    if not resume:
        click.echo(ctx.get_help())
        ctx.exit(2)
    _resume_comparison(ctx, resume, None, {"as_json": as_json})


cli.add_command(PluginCommands(
    "compare", builder=build_compare_command, callback=_compare_group, invoke_without_command=True,
    params=[click.Option(["--resume"], default=None, type=click.Path(exists=True, file_okay=False),
                         help="finish the comparison in this directory (killed, or SIGKILLed): hpctl compare "
                              "--resume DIR"),
            click.Option(["--json", "as_json"], is_flag=True, help="with --resume: print the result as one JSON line")],
    help="Compare controllers on one plugin: hpctl compare PLUGIN --controllers a,b --seeds N|A..B; "
         "finish a killed one: hpctl compare --resume DIR"))


def _ran_config(run_dir: Path) -> dict[str, Any]:
    """The plugin config a finished run recorded in result.json (``{}`` for an older or unfinished run)."""
    from hpctl.rundir import RESULT

    try:
        ran = json.loads((run_dir / RESULT).read_text(encoding="utf-8")).get("plugin_config")
    except (OSError, ValueError, AttributeError):
        return {}
    return ran if isinstance(ran, dict) else {}


def _as_eval_options(message: str, config_cls: type) -> str:
    """``message`` with each ``--flag value`` of a plugin option (``--device cpu``) written as
    eval takes it (``-o device=cpu``)."""
    import re

    names = {f.name for f in dataclasses.fields(config_cls)}

    def swap(m: re.Match) -> str:
        name = m.group(1).replace("-", "_")
        return f"-o {name}={m.group(2)}" if name in names else m.group(0)

    return re.sub(r"--([a-z][a-z0-9-]*)[ =]([^\s,;)]+)", swap, message)


@cli.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True), help="data file in the task's format")
@click.option("--lang", default=None, help="language of the data (default: the run's)")
@click.option("--option", "-o", "sets", multiple=True, metavar="KEY=VALUE",
              help="override one of the run's plugin options for scoring, e.g. -o device=cpu (repeatable; "
                   "--set is for controller settings, which scoring has none of)")
@click.option("--adapter", default=None, metavar="NAME",
              help="which of the run's saved artifacts to score (grasp_lora: final, target_only, source, "
                   "target; default: final)")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as one JSON line")
def eval_cmd(run_dir: str, data: str, lang: str | None, sets: tuple[str, ...], adapter: str | None,
             as_json: bool) -> None:
    """Score a finished run's final artifact (e.g. grasp_lora's adapter) on any data file."""
    from rich.table import Table

    import inspect

    from hpctl.config import build_dataclass
    from hpctl.registry import load_plugin
    from hpctl.rundir import read_spec

    spec = read_spec(run_dir)
    plugin = load_plugin(spec.plugin)
    overrides = {k.replace("-", "_"): v for k, v in parse_sets(sets).items()}
    asked = dict(spec.plugin_config)
    ran = _ran_config(Path(run_dir))  # presets filled in, dtype "auto" resolved: score as the run ran
    config = build_dataclass(plugin.Config, {**asked, **ran, **overrides}, what=f"plugin {spec.plugin!r}")
    which = {} if adapter is None else {"adapter": adapter}  # only plugins that save several take it
    if which and "adapter" not in inspect.signature(plugin.eval_run).parameters:
        raise ConfigError(f"plugin {spec.plugin!r} scores one artifact; its eval takes no --adapter")
    try:
        metrics = plugin.eval_run(Path(run_dir), config, data=data, lang=lang, **which)
    except HpctlError as exc:  # a plugin's advice names `hpctl run`'s flags: eval takes them as -o KEY=VALUE
        exc.args = (_as_eval_options(str(exc), plugin.Config),) + exc.args[1:]
        raise
    table = Table(title=f"{spec.plugin} run {run_dir} on {data}")
    table.add_column("metric")
    table.add_column("value")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    make_console(stderr=as_json).print(table)
    if as_json:
        click.echo(json.dumps(metrics, default=str))


@cli.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON object: plugins (name, entry point, description or why it cannot load), "
                   "controllers, the unavailable ones and why, Gymnasium ids")
def list_cmd(as_json: bool) -> None:
    """Installed plugins, controllers and registered Gymnasium ids."""
    from rich.markup import escape
    from rich.table import Table

    from hpctl.controllers.base import controller_names, unavailable_controllers
    from hpctl.envs import env_ids
    from hpctl.registry import load_plugin, plugin_entry_points

    plugins = []
    for name, ep in sorted(plugin_entry_points().items()):
        try:
            plugins.append({"name": name, "entry_point": ep.value, "description": load_plugin(name).description,
                            "error": None})
        except HpctlError as exc:  # e.g. a missing extra: "grasp_lora needs the 'grasp' extra: ..."
            plugins.append({"name": name, "entry_point": ep.value, "description": None, "error": str(exc)})
    controllers = controller_names()
    unavailable = {name: str(why) for name, why in unavailable_controllers().items()}  # e.g. tpe without optuna
    ids = list(env_ids())
    if as_json:
        click.echo(json.dumps({"plugins": plugins, "controllers": controllers, "unavailable_controllers": unavailable,
                               "gymnasium_ids": ids}))
        return
    console = make_console(stderr=False)
    t = Table(title="plugins (entry-point group hpctl.plugins)")
    t.add_column("name")
    t.add_column("from")
    t.add_column("description")
    for p in plugins:
        desc = escape(p["description"]) if p["error"] is None else f"[red]{escape(p['error'])}[/red]"
        t.add_row(p["name"], escape(p["entry_point"]), desc)
    console.print(t)
    console.print("controllers: " + ", ".join(controllers))
    for why in unavailable.values():
        console.print(f"  {why}", markup=False, style="yellow")
    console.print("gymnasium ids: " + ", ".join(ids))


def _on_sigterm(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    # once: a second SIGTERM during the clean-up ends the process the default way
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def _redeliver_swallowed_interrupts(unraisable) -> None:  # noqa: ANN001 - sys.unraisablehook signature
    """``sys.unraisablehook`` while the CLI runs: an interrupt that landed in a finaliser.

    A signal handler raises in whatever Python code runs when the signal arrives. When that
    is a finaliser (a weakref callback or ``__del__`` run by the garbage collector, as
    SQLAlchemy's registry has), Python prints "Exception ignored" with a traceback and drops
    the exception, so SIGTERM or Ctrl-C would be lost and the command would go on. Send the
    signal again instead (SIGTERM's handler re-armed, as it disarms itself), from a thread a
    moment later: sent from here, its handler would run inside the finaliser again. It then
    arrives after the finaliser, where the command's own clean-up handles it (one swallowed
    again comes back here and is sent again)."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        if isinstance(exc, Terminated):
            signal.signal(signal.SIGTERM, _on_sigterm)
        again = threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGTERM if isinstance(exc, Terminated)
                                                else signal.SIGINT))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def _resume_hint() -> str:
    """What an interrupted command left to resume: the folders with a checkpoint (a comparison:
    its spec), named, or that nothing was checkpointed yet."""
    from hpctl.rundir import resumable_folders

    found = resumable_folders()
    runs = [str(f) for f, what in found if what != "compare"]
    comps = [str(f) for f, what in found if what == "compare"]
    if comps:
        return f"finish it with: hpctl compare --resume {shlex.quote(comps[-1])}"
    if runs:
        return f"its checkpoint is kept: resume with --resume {shlex.quote(runs[-1])}"
    return "no checkpoint was written yet, so there is nothing to resume"


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit code 2 for user errors, 1 for crashes.

    SIGTERM ends a run like Ctrl-C (MLflow run KILLED, checkpoint kept), exit code 143.
    """
    previous_hook = sys.unraisablehook
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        sys.unraisablehook = _redeliver_swallowed_interrupts
    try:
        return _main(argv)
    finally:
        sys.unraisablehook = previous_hook


def _main(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="hpctl", standalone_mode=False)
        return 0
    except Terminated:
        click.echo(f"hpctl: terminated (SIGTERM); {_resume_hint()}", err=True)
        return 143
    except HpctlError as exc:
        click.echo(f"hpctl: error: {shorten(str(exc), MAX_ERROR_CHARS)}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort as exc:  # click turns Ctrl-C into Abort when not standalone
        if isinstance(exc.__cause__, Terminated) or isinstance(exc.__context__, Terminated):
            click.echo(f"hpctl: terminated (SIGTERM); {_resume_hint()}", err=True)
            return 143
        click.echo(f"hpctl: interrupted; {_resume_hint()}", err=True)
        return 130
    except click.ClickException as exc:
        msg = exc.format_message().replace("\n", " ")
        click.echo(f"hpctl: error: {msg}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo(f"hpctl: interrupted; {_resume_hint()}", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback on the terminal
        where = getattr(exc, "hpctl_error_file", None)
        detail = f" (traceback in {where})" if where else ""
        click.echo(f"hpctl: error: {shorten(one_line(exc), MAX_ERROR_CHARS)}{detail}", err=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
