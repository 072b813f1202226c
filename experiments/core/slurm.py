"""Rerun a figure on a Slurm cluster: a job array with one run (method, seed) per task, then the figure.

    python -m experiments.core.slurm transfer [--profile quick|paper] [--seeds 0,1,2] [--method a,b]
        [--gpus N] [--cpus N] [--time HH:MM:SS] [--partition P] [--mem M] [--dry-run] [key=value ...]

writes ``<results>/<profile>/slurm/<figure>.sbatch``, whose task i runs the i-th (method, seed) with
exactly the command the Makefile runs (``python -m experiments.<x> --profile P --method M --seeds S``
plus the figure's fixed and the given ``key=value`` overrides), and ``<figure>-figure.sbatch``, which
draws the figure; then submits the array and the figure job, the latter with
``--dependency=afterany:<array>`` so it draws whatever finished. ``--dry-run`` writes and prints
the scripts without submitting.

Preemption and time limits: the array asks for ``--signal=B:USR1@120`` and ``--requeue``, and the
batch shell ``exec``s Python, so the signal reaches the runner, which checkpoints after the current
minibatch, requeues the task (``scontrol requeue <array>_<task>``) and exits; the requeued task
resumes from the checkpoint to the same bits. Runs already complete are skipped, so resubmitting a
whole figure only runs what is missing. With ``--gpus N`` > 1 each task runs its run data-parallel
under ``torchrun`` (one process per GPU; see ``multirate.distributed``).

A figure is an entry of ``experiments.core.registry.EXPERIMENTS``: the parts (experiment commands) that
produce its runs and the module that draws it (called as ``python -m <figure> --profile P --results-dir R``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from experiments.core import registry
from experiments.core.config import PROFILES, list_methods, run_selection

ROOT = registry.ROOT


def array_tasks(figure: str, profile: str, seeds: list[int], methods: list[str] | None = None,
                overrides: list[str] = ()) -> list[list[str]]:
    """The arguments after ``python -m`` of every array task, in task-index order.

    A TOML file without ``[methods.*]`` gives one run per seed (of its default method).
    """
    tasks, known = [], set()
    for part in registry.experiment(figure).parts:
        part_methods = list_methods(part.toml_path)
        known.update(part_methods)
        for variant in part.override_sets(profile):
            for method in part_methods or [None]:
                if method is None or methods is None or method in methods:
                    chosen = [] if method is None else ["--method", method]
                    tasks += [[part.module, "--profile", profile, *chosen, "--seeds", str(seed),
                               *variant, *overrides] for seed in seeds]
    unknown = sorted(set(methods or ()) - known)
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} for figure {figure!r}: it has {sorted(known)}")
    return tasks


def _header(name: str, log_dir: Path, cpus: int, gpus: int, time: str, partition: str | None,
            mem: str | None) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --cpus-per-task={cpus}",
             f"#SBATCH --time={time}", f"#SBATCH --chdir={ROOT}",
             f"#SBATCH --output={log_dir}/%x-%A_%a.out", "#SBATCH --open-mode=append"]
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if mem:
        lines.append(f"#SBATCH --mem={mem}")
    return lines


def array_script(tasks: list[list[str]], name: str, log_dir: Path, cpus: int = 1, gpus: int = 0,
                 time: str = "04:00:00", partition: str | None = None, mem: str | None = None,
                 python: str = sys.executable) -> str:
    """The sbatch array script: task i execs ``python -m tasks[i]`` (under torchrun when gpus > 1)."""
    launch = [python, "-m"]
    if gpus > 1:
        launch = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m"]
    lines = _header(name, log_dir, cpus, gpus, time, partition, mem)
    lines += [f"#SBATCH --array=0-{len(tasks) - 1}", "#SBATCH --requeue",
              # torchrun passes SIGTERM on to its workers (and dies of SIGUSR1), Python catches both.
              f"#SBATCH --signal=B:{'TERM' if gpus > 1 else 'USR1'}@120",
              "set -euo pipefail",
              "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
              "# exec: Python is the batch shell, so the signal before the time limit reaches the runner.",
              'case "$SLURM_ARRAY_TASK_ID" in']
    lines += [f"  {i}) exec {shlex.join([*launch, *task])} ;;" for i, task in enumerate(tasks)]
    lines += ['  *) echo "no task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac", ""]
    return "\n".join(lines)


def figure_script(figure: str, profile: str, results_dir: str, name: str, log_dir: Path,
                  partition: str | None = None, python: str = sys.executable) -> str:
    """The sbatch script that draws the figure from whatever runs finished."""
    lines = _header(name, log_dir, 1, 0, "01:00:00", partition, None)
    lines[lines.index(f"#SBATCH --output={log_dir}/%x-%A_%a.out")] = f"#SBATCH --output={log_dir}/%x-%j.out"
    draw = registry.commands(figure, profile, results_dir=results_dir, python=python)[-1]
    return "\n".join([*lines, f"exec {shlex.join(draw)}", ""])


def sbatch(script: Path, *options: str) -> str:
    """Submit `script`; returns the job id."""
    done = subprocess.run(["sbatch", "--parsable", *options, str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


def main(argv: list[str] | None = None) -> tuple[str, str] | None:
    """Write the scripts and submit them; returns (array job id, figure job id), None with --dry-run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="key=value overrides go to every run, as for the experiments")
    parser.add_argument("figure", choices=sorted(registry.EXPERIMENTS))
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated integer seeds")
    parser.add_argument("--method", default=None, help="comma-separated methods (default: all)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per run (>1: data-parallel, torchrun)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per run")
    parser.add_argument("--time", default="04:00:00", help="time limit per run, HH:MM:SS")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--mem", default=None, help="memory per run, e.g. 16G")
    parser.add_argument("--dry-run", action="store_true", help="write and print the scripts, submit nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    methods, seeds = run_selection(parser, args)
    try:
        tasks = array_tasks(args.figure, args.profile, seeds, methods, args.overrides)
    except ValueError as err:
        parser.error(str(err))
    if not tasks:
        parser.error("no runs to submit")

    results_dir = "results"
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key.strip() == "results_dir":
            results_dir = value
    folder = (ROOT / results_dir / args.profile / "slurm").resolve()
    name = f"multirate-{args.figure}-{args.profile}"
    array_file, figure_file = folder / f"{args.figure}.sbatch", folder / f"{args.figure}-figure.sbatch"
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    array_file.write_text(array_script(tasks, name, folder / "logs", args.cpus, args.gpus, args.time,
                                       args.partition, args.mem))
    figure_file.write_text(figure_script(args.figure, args.profile, results_dir, f"{name}-figure",
                                         folder / "logs", args.partition))
    if args.dry_run:
        print(array_file.read_text() + "\n" + figure_file.read_text(), end="")
        print(f"wrote {array_file} ({len(tasks)} tasks) and {figure_file}; not submitted (--dry-run)")
        return None
    array_job = sbatch(array_file)
    figure_job = sbatch(figure_file, f"--dependency=afterany:{array_job}")
    print(f"submitted {array_file.name}: array job {array_job} ({len(tasks)} tasks), "
          f"figure job {figure_job} after it; logs in {folder / 'logs'}", flush=True)
    return array_job, figure_job


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)
