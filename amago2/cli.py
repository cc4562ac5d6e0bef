"""The command line: `amago2 train | eval | baseline | plot | data` (also `python -m amago2 ...`).

    amago2 train gin/tmaze.gin [--bind 'Experiment.epochs = 50' ...] [--run-dir DIR] [--resume] [--import MODULE]
    amago2 eval RUN_DIR_OR_CHECKPOINT --episodes 32 [--save-trajs DIR]
    amago2 baseline gin/tmaze.gin [--run-dir DIR]     # what a policy without memory reaches
    amago2 plot RUN_DIR [RUN_DIR ...] [--out curves.png]
    amago2 data import-minari NAME_OR_PATH OUT_DIR [--trial-episodes K] [--task NAME] [--download]
    amago2 data export-minari TRAJ_DIR DATASET_ID --env ENV_ID [--env-kwargs JSON] [--data-format hdf5|arrow]

As with `python -m amago2`, the working directory is on the import path, so a config can
name an env in a module of yours (`Experiment.train_env = "myenvs:MyTask-v0"`). `--import
MODULE` imports a module before the config is read (for gin configurables or gym ids it
registers) and is recorded in the run's config.gin for --resume and eval.

Gin bindings are parsed before anything runs, so a misspelt name fails at once with gin's
message. A run directory keeps the config it was started with (`config.gin`), which
`--resume` and `eval` read back.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import gin

CONFIG_NAME = "config.gin"


def _parse_gin(config_text: str, bindings: Sequence[str], command: str = "amago2") -> None:
    """Parse a run's config; any problem ends the command with gin's one-line message."""
    import amago2.envs  # noqa: F401  (registers the env ids and gin configurables used by configs)
    import amago2.experiment  # noqa: F401
    import amago2.plot  # noqa: F401  (plot_runs.max_task_panels can be bound in a config)

    gin.clear_config()
    try:
        gin.parse_config(config_text)
        gin.parse_config(list(bindings))
    except ModuleNotFoundError as err:  # an `import` line of the config (or --import)
        found = re.search(r"No module named '([^']+)'", str(err))
        name = err.name or (found.group(1) if found else str(err).splitlines()[0])
        raise SystemExit(f"{command}: cannot import module {name!r}, which the config imports; {_WHERE_MODULES}") from None
    except Exception as err:  # gin's message names the unknown configurable or parameter
        raise SystemExit(f"{command}: bad gin configuration: {err}") from None
    _check_env_modules(command)


_WHERE_MODULES = (
    "run amago2 from the folder that holds it, add that folder to PYTHONPATH, or install it"
)


def _check_env_modules(command: str) -> None:
    """Import the modules that `module:EnvId` env ids name, before any env is built, so that a
    missing one fails here in one line rather than deep inside the env pool."""
    from amago2.experiment import experiment_settings

    cfg = experiment_settings()
    for key in ("train_env", "eval_env"):
        specs = cfg[key] if isinstance(cfg[key], (list, tuple)) else [cfg[key]]
        for spec in specs:
            if not (isinstance(spec, str) and ":" in spec):
                continue
            module = spec.split(":", 1)[0]
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                missing = "" if err.name == module else f" (it imports {err.name!r}, which is missing)"
                raise SystemExit(
                    f"{command}: Experiment.{key} = {spec!r} names module {module!r}, which does not import{missing}; "
                    f"{_WHERE_MODULES}, or pass --import with its importable name"
                ) from None


def _with_imports(text: str, modules: Sequence[str]) -> str:
    """The config text with gin `import` lines for `--import` modules (kept in config.gin)."""
    lines = [f"import {m}" for m in modules if f"import {m}" not in text.splitlines()]
    return ("\n".join(lines) + "\n" + text) if lines else text


_INCLUDE = re.compile(r"""^\s*include\s+(['"])(?P<path>.+?)\1\s*$""")


def expand_includes(config: Path, _seen: Optional[Tuple[Path, ...]] = None) -> str:
    """A gin file's text with every `include 'other.gin'` line replaced by that file's text.

    Included paths are relative to the including file (then to the working directory), so
    `gin/suites/popgym/transformer.gin` can include `base.gin` beside it. The run directory
    saves the expanded text, which therefore resumes from anywhere.
    """
    config = config.resolve()
    seen = (_seen or ()) + (config,)
    out = []
    for line in config.read_text().splitlines():
        m = _INCLUDE.match(line)
        if not m:
            out.append(line)
            continue
        target = next((p for p in (config.parent / m.group("path"), Path(m.group("path"))) if p.is_file()), None)
        if target is None:
            raise SystemExit(f"amago2: {config} includes {m.group('path')!r}, which exists neither beside it nor in the working directory")
        if target.resolve() in seen:
            raise SystemExit(f"amago2: {config} includes {target} in a cycle")
        out += [f"# ---- included from {m.group('path')}", expand_includes(target, seen), f"# ---- end of {m.group('path')}"]
    return "\n".join(out) + "\n"


def _config_text(config: Path, bindings: Sequence[str]) -> str:
    if not config.is_file():
        raise SystemExit(f"amago2: config file {config} does not exist (see the gin/ folder for examples)")
    text = expand_includes(config)
    if bindings:
        text += "\n# --bind from the command line\n" + "\n".join(bindings) + "\n"
    return text


def cmd_train(args) -> int:
    from amago2.experiment import Experiment

    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / (
        Path(args.config).stem + datetime.datetime.now().strftime("-%Y%m%d-%H%M%S")
    )
    saved = run_dir / CONFIG_NAME
    if args.resume and saved.is_file() and not args.config:
        text = saved.read_text() + ("\n" + "\n".join(args.bind) + "\n" if args.bind else "")
    elif args.config:
        text = _config_text(Path(args.config), args.bind)
    else:
        raise SystemExit(f"amago2 train: give a CONFIG.gin (or --resume with a --run-dir holding {CONFIG_NAME})")
    text = _with_imports(text, args.imports)
    _parse_gin(text, [], "amago2 train")
    exp = Experiment(run_dir=run_dir)
    if exp.accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The run directory keeps what this run is configured with, including bindings added
        # on a resume, so that the next resume and `amago2 eval` see the same configuration.
        saved.write_text(text)
    if args.resume and not exp.resume() and exp.accelerator.is_main_process:
        print(f"no checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
    result = exp.run()
    if exp.accelerator.is_main_process:
        from amago2.plot import plot_runs

        png = plot_runs([run_dir])
        print("final evaluation: " + ", ".join(f"{k}={v:.3g}" for k, v in sorted(result.items())))
        print(f"learning curves: {png}")
        if exp.exit_code:
            print(f"amago2 train: {exp.ended}; checkpoint saved, resume with "
                  f"`amago2 train --run-dir {run_dir} --resume`", file=sys.stderr)  # fmt: skip
    return exp.exit_code


def cmd_eval(args) -> int:
    """Evaluate a checkpoint in fresh eval envs. Builds only the agent and the eval pool:
    nothing under the run directory is opened for writing."""
    import torch

    from amago2.agent import Agent
    from amago2.checkpoint import checkpoint_paths, load_checkpoint
    from amago2.evaluation import make_eval_pool, run_trials, sampled_names
    from amago2.experiment import experiment_settings

    if args.save_values and not args.save_trajs:
        raise SystemExit("amago2 eval: --save-values writes beside the saved trajectories; give --save-trajs DIR too")
    target = Path(args.target)
    run_dir = target if target.is_dir() else target.parent.parent
    config = run_dir / CONFIG_NAME
    if not config.is_file():
        raise SystemExit(f"amago2 eval: {run_dir} has no {CONFIG_NAME}; give a run directory made by `amago2 train`")
    ckpt = target if target.is_file() else (checkpoint_paths(run_dir / "checkpoints") or [None])[-1]
    if ckpt is None:
        raise SystemExit(f"amago2 eval: no checkpoint in {run_dir / 'checkpoints'}")
    _parse_gin(_with_imports(config.read_text(), args.imports), args.bind, "amago2 eval")
    cfg = experiment_settings()
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg["cpu"] else "cpu")
    env = cfg["eval_env"] if cfg["eval_env"] is not None else cfg["train_env"]
    pool_options = dict(n_envs=cfg["n_envs"], env_mode=cfg["env_mode"], trial_episodes=cfg["trial_episodes"],
                        env_kwargs=cfg["env_kwargs"], seed=cfg["seed"] + 99_991)  # fmt: skip
    pool = make_eval_pool(env, args.episodes, **pool_options)
    try:
        agent = Agent(pool.observation_space, pool.action_space, max_seq_len=cfg["max_seq_len"]).to(device)
        agent.load_state_dict(load_checkpoint(ckpt, map_location=device)["agent"])
    except BaseException:
        pool.close()
        raise
    options = dict(device=device, max_segment_len=cfg["max_segment_len"] or 8 * cfg["max_seq_len"], act_threads=cfg["act_threads"])
    result = run_trials(agent, pool, args.episodes, sample=False, save_dir=args.save_trajs, **options)
    if cfg["eval_sampled"]:  # the same tasks again, sampling actions
        again = make_eval_pool(env, args.episodes, **pool_options)
        result.update(sampled_names(run_trials(agent, again, args.episodes, sample=True, **options)))
    print(f"{ckpt}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.items())))
    if args.save_trajs:
        print(f"trajectories saved to {args.save_trajs}")
    if args.save_values:
        from amago2.agent.values import save_trajectory_values

        written = [save_trajectory_values(agent, p, device) for p in sorted(Path(args.save_trajs).rglob("*.npz"))]
        print(f"values of {len(written)} trajectories saved beside them (<file>.values, read with numpy.load)")
    return 0


def cmd_baseline(args) -> int:
    """Score a uniform-random policy, then train the memoryless (ff) agent on the same config."""
    from amago2.baseline import random_policy_metrics, report
    from amago2.experiment import Experiment, experiment_settings

    text = _with_imports(_config_text(Path(args.config), args.bind), args.imports)
    _parse_gin(text, [], "amago2 baseline")
    cfg = experiment_settings()
    random = random_policy_metrics(cfg, args.episodes)
    memoryless = None
    if not args.no_train:
        text += '\n# amago2 baseline: the memoryless agent\nAgent.traj_encoder = "ff"\nExperiment.eval_sampled = False\n'
        _parse_gin(text, [], "amago2 baseline")
        run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / (
            Path(args.config).stem + "-ff-baseline" + datetime.datetime.now().strftime("-%Y%m%d-%H%M%S")
        )
        exp = Experiment(run_dir=run_dir, eval_trials=args.episodes)
        if exp.accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / CONFIG_NAME).write_text(text)
        memoryless = exp.run()
        print(f"memoryless run: {run_dir}")
    print(report(args.config, random, memoryless, cfg["epochs"] * cfg["updates_per_epoch"]))
    return 0


def cmd_plot(args) -> int:
    from amago2.plot import plot_runs

    print(plot_runs(args.run_dirs, out=args.out, x=args.x))
    return 0


def cmd_import_minari(args) -> int:
    from amago2.datasets import import_minari

    for module in args.imports:
        importlib.import_module(module)
    summary = import_minari(args.dataset, args.out_dir, trial_episodes=args.trial_episodes, task=args.task,
                            use_amago2_infos=not args.ignore_amago2_infos, download=args.download)  # fmt: skip
    how = "restored exactly (an amago2 export)" if summary.amago2_export else f"{args.trial_episodes} episode(s) per trajectory"
    print(f"{summary.dataset_id}: {summary.episodes} episodes, {summary.transitions} transitions -> "
          f"{len(summary.paths)} trajectory files in {args.out_dir} ({how})")  # fmt: skip
    if summary.skipped_empty:
        print(f"skipped {len(summary.skipped_empty)} episodes without a step: {summary.skipped_empty}")
    if summary.dropped_incomplete_trial:
        print(f"dropped the last {len(summary.dropped_incomplete_trial)} episodes, too few for a trial: {summary.dropped_incomplete_trial}")
    print(f"train on it offline: --bind 'Experiment.offline = True' --bind 'Experiment.protected_dirs = [\"{args.out_dir}\"]'")
    return 0


def cmd_export_minari(args) -> int:
    import json

    from amago2.datasets import export_minari

    for module in args.imports:
        importlib.import_module(module)
    kwargs = json.loads(args.env_kwargs) if args.env_kwargs else None
    dataset = export_minari(args.traj_dir, args.dataset_id, args.env, env_kwargs=kwargs, data_format=args.data_format,
                            author=args.author, description=args.description)  # fmt: skip
    print(f"{dataset.id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps -> {dataset.spec.data_path}")
    return 0


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="convert offline datasets: Minari to trajectory files and back").add_subparsers(dest="data_command", required=True)
    imp = data.add_parser("import-minari", help="write a Minari dataset as amago2 trajectory files (for Experiment.protected_dirs)")
    imp.add_argument("dataset", help="a local Minari dataset id (e.g. mujoco/pusher/expert-v0) or a dataset folder")
    imp.add_argument("out_dir", help="an empty or new directory for the trajectory files")
    imp.add_argument("--trial-episodes", type=int, default=1, help="consecutive episodes per trajectory (meta-RL trials)")
    imp.add_argument("--task", help="task name stored in the files (default the dataset's env id)")
    imp.add_argument("--download", action="store_true", help="download the dataset id with Minari if it is not local")
    imp.add_argument("--ignore-amago2-infos", action="store_true", help="read an amago2 export as a plain Minari dataset")
    exp = data.add_parser("export-minari", help="write trajectory files (a run's replay, eval --save-trajs) as a Minari dataset")
    exp.add_argument("traj_dir", help="directory of trajectory files, searched recursively")
    exp.add_argument("dataset_id", help="new Minari dataset id, (namespace/)name-v<version>")
    exp.add_argument("--env", required=True, help="gymnasium id of the env the data came from (as in Experiment.train_env)")
    exp.add_argument("--env-kwargs", help="JSON keyword arguments for the env (as Experiment.env_kwargs)")
    exp.add_argument("--data-format", default="hdf5", choices=("hdf5", "arrow"))
    exp.add_argument("--author")
    exp.add_argument("--description")
    for parser in (imp, exp):
        parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                            help="import MODULE first (e.g. one that registers your env ids)")  # fmt: skip
    imp.set_defaults(fn=cmd_import_minari)
    exp.set_defaults(fn=cmd_export_minari)


def main(argv: Optional[List[str]] = None) -> int:
    # `python -m amago2` has the working directory on the path; the `amago2` script does not.
    # Both should find a user's env module beside their config.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(prog="amago2", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an agent from a gin config")
    train.add_argument("config", nargs="?", help="gin config file (optional with --resume)")
    train.add_argument("--bind", action="append", default=[], help="extra gin binding, e.g. 'Experiment.epochs = 5'")
    train.add_argument("--run-dir", help="where the run writes (default runs/<config>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    train.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                     help="import MODULE before reading the config (e.g. one that registers your envs)")
    train.set_defaults(fn=cmd_train)
    ev = sub.add_parser("eval", help="evaluate a run's newest checkpoint (or a given checkpoint file)")
    ev.add_argument("target", help="run directory or checkpoint file")
    ev.add_argument("--episodes", type=int, default=16, help="number of trials to run")
    ev.add_argument("--save-trajs", help="also save the trajectories (usable as an offline dataset)")
    ev.add_argument("--save-values", action="store_true",
                    help="with --save-trajs: also write the critic's Q, V and advantage per gamma beside each file")
    ev.add_argument("--bind", action="append", default=[], help="extra gin binding")
    ev.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                     help="import MODULE before reading the config (e.g. one that registers your envs)")
    ev.set_defaults(fn=cmd_eval)
    base = sub.add_parser("baseline", help="what the config's task gives without memory: random and memoryless (ff) agents")
    base.add_argument("config", help="gin config file")
    base.add_argument("--bind", action="append", default=[], help="extra gin binding")
    base.add_argument("--run-dir", help="where the memoryless run writes (default runs/<config>-ff-baseline-<time>)")
    base.add_argument("--episodes", type=int, default=32, help="evaluation trials of each baseline")
    base.add_argument("--no-train", action="store_true", help="only score the random policy")
    base.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                      help="import MODULE before reading the config (e.g. one that registers your envs)")
    base.set_defaults(fn=cmd_baseline)
    plot = sub.add_parser("plot", help="draw learning curves of one or more runs")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("--out", help="PNG path (default <first run>/curves.png)")
    plot.add_argument("--x", default="env_steps", choices=("env_steps", "updates", "wall_time"))
    plot.set_defaults(fn=cmd_plot)
    _add_data_commands(sub)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
