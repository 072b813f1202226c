"""The committed reference: every result behind the figures, one row per run and summary metric.

    python -m experiments.reporting.reference check  [--profile quick] [--experiment transfer,...]
        [--results-dir DIR]
    python -m experiments.reporting.reference update [--profile quick] [--experiment transfer,...]
        [--results-dir DIR]
                                           [--merge]
    python -m experiments.reporting.reference slice  [--results-dir DIR]   # rerun the CI slice and check it
    python -m experiments.reporting.reference kernels    # this machine's kernels (docs/determinism.md)

``experiments/reference/<profile>.csv`` holds, for every complete run under ``results/<profile>/``
(the ablations' ``results/ablations/<name>/<profile>/`` and the tuning trials'
``results/tune/<point>/<profile>/`` too), its summary metrics (`summarize`):
columns ``experiment, run, method, seed, metric, value``. ``experiment`` is the run's results folder
relative to the profile (``transfer``, ``ablations/k/transfer``); ``run`` is its name, which
hashes its whole config, so a run with other settings is a different row, never a mismatch.

``check`` compares what is under ``results/`` with the reference and prints every mismatch: values
must be equal to the bit (the determinism contract, `experiments.core.determinism`), except training
times (metrics named ``time_s``), which are recorded for the tables but never compared. A
reference row without a result is "missing"; a result without a reference row is listed as "new".
It exits 1 on any mismatch or missing row. ``update`` rewrites the selected experiments' rows;
with ``--merge`` it only adds or replaces the runs that are under ``results/`` (how the ``cpu``
profile's reference grows run by run: its figures take hours, and results/ need not keep them all).

MKL runs other kernels on Intel CPUs than on AMD ones (`experiments.core.determinism.cpu_vendor`),
so a profile's bits are recorded per vendor: ``<profile>.csv`` is the published reference (its
vendor in `RECORDED_ON`; the claims, README and docs read it), and ``<profile>-<vendor>.csv`` holds
the same runs' values as another vendor's machines compute them. ``check`` and ``update`` use the
file of this machine's vendor (`vendor_path`); a vendor with no file of its own checks against the
published one and is told first that values will differ.

``slice`` is CI's reproduction check: the runs of ``experiments/reference/slice.toml`` (one method and
seed per figure with a shortened, fixed config) into a fresh folder, then ``check`` against
``experiments/reference/slice-<vendor>.csv`` for this machine's CPU vendor (``intel``, ``amd``):
MKL's kernels differ between the two (`experiments.core.determinism.cpu_vendor`), so each vendor's
bits are recorded, and a change that moves a number updates both files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from experiments.core import determinism, registry
from experiments.core.config import PROFILES
from experiments.core.errors import UserError
from experiments.core.files import atomic_open
from experiments.core.runlog import read_record, read_run

FOLDER = Path(__file__).parents[1] / "reference"
COLUMNS = ("experiment", "run", "method", "seed", "metric", "value")
NOT_COMPARED = ("time_s",)  # wall-clock: recorded, machine-dependent
# Rows kept as the record of runs today's commands no longer make (before the comparison protocol
# or the patch construction fix; design checks with their own overrides): read by the claims and the
# docs, never expected under results/.
ARCHIVED = ("before/", "design/")
CURVE = "val_loss@epoch"  # + N: the validation loss after epoch N
SKIP_DIRS = {"figures", "wandb", "slurm", "pretrained", "checkpoints", "sweeps"}
# The CPU vendor each profile's published reference was recorded on (MKL rounds differently on Intel
# and AMD, docs/determinism.md); another vendor's machines check `<profile>-<vendor>.csv`.
RECORDED_ON = {"quick": "amd"}


# ----------------------------------------------------------------------------- summaries

def summarize(rows: list[dict]) -> dict[str, float]:
    """A run's summary metrics from its logged rows: every metric's value at the last evaluation,
    the training time there (``time_s``) and, for a run that logs ``val_loss``, its minimum, the
    epoch of the minimum, every other metric at that epoch (``<metric>@best_val``) and the whole
    validation curve (``val_loss@epoch<N>``: a rise over a span after the minimum needs it)."""
    if not rows:
        return {}
    last = max(r["epoch"] for r in rows)
    out = {r["metric"]: r["value"] for r in rows if r["epoch"] == last}
    out["time_s"] = max(r["time_s"] for r in rows if r["epoch"] == last)
    val = [r for r in rows if r["metric"] == "val_loss"]
    if val:
        best = min(val, key=lambda r: (r["value"], r["epoch"]))
        out["val_loss@min"] = best["value"]
        out["val_loss@min_epoch"] = float(best["epoch"])
        out.update({f"{r['metric']}@best_val": r["value"] for r in rows
                    if r["epoch"] == best["epoch"] and r["metric"] != "val_loss"})
        out.update({f"{CURVE}{int(r['epoch'])}": r["value"] for r in val})
    return out


def _run_rows(folder: Path, experiment: str) -> list[dict]:
    """Reference rows of every complete run in one results folder."""
    out = []
    for json_path in sorted(folder.glob("*.json")):
        if read_record(json_path).get("status") != "complete":
            continue
        _, rows = read_run(json_path)  # verified: a damaged or missing CSV is refused, naming it
        if not rows:
            continue
        for metric, value in summarize(rows).items():
            out.append(dict(experiment=experiment, run=json_path.stem, method=rows[0]["method"],
                            seed=rows[0]["seed"], metric=metric, value=value))
    return out


def _convergence_rows(path: Path, experiment: str) -> list[dict]:
    """The convergence check writes one table, not runs: a row per (method, k, T) and quantity."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            run = f"{r['method']}-k{r['k']}-T{r['T']}"
            for metric in ("measured", "measured_sd", "bound", "L", "M", "M_observed", "f0_minus_fstar"):
                out.append(dict(experiment=experiment, run=run, method=r["method"], seed=-1,
                                metric=metric, value=float(r[metric])))
    return out


def collect(results_dir: str | Path, profile: str) -> list[dict]:
    """Reference rows for everything under `results_dir` of `profile`, sorted."""
    results_dir = Path(results_dir)
    folders = [(results_dir / profile, "")]
    # The ablations' runs (experiments/ablations.py), the protocol's trials (experiments/protocol.py)
    folders += [(p / profile, f"{group}/{p.name}/") for group in ("ablations", "tune")
                for p in sorted((results_dir / group).glob("*"))]
    out = []
    for root, prefix in folders:
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
            experiment = prefix + folder.name
            if (folder / "convergence.csv").exists():
                out += _convergence_rows(folder / "convergence.csv", experiment)
            else:
                out += _run_rows(folder, experiment)
    return sorted(out, key=_key)


def _key(row: dict) -> tuple:
    return row["experiment"], row["run"], row["metric"]


# ----------------------------------------------------------------------------- the file

def path(profile: str) -> Path:
    """The profile's published reference (what the claims, README and docs read)."""
    return FOLDER / f"{profile}.csv"


def vendor_path(profile: str, vendor: str | None = None) -> Path:
    """The reference a machine of `vendor` (this one's by default) checks and updates: the published
    one where it was recorded on this vendor (or records no vendor), else ``<profile>-<vendor>.csv``."""
    vendor = vendor or determinism.cpu_vendor()
    recorded_on = RECORDED_ON.get(profile)
    return path(profile) if recorded_on in (None, vendor) else FOLDER / f"{profile}-{vendor}.csv"


def read(file: str | Path) -> list[dict]:
    """The reference rows of `file` (values as floats: they round-trip exactly)."""
    file = Path(file)
    if not file.exists():
        return []
    with open(file, newline="") as f:
        return [dict(r, seed=int(r["seed"]), value=float(r["value"])) for r in csv.DictReader(f)]


def write(file: str | Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=_key))  # str(float) is repr: exact
    with atomic_open(file, "w") as f:
        f.write(buf.getvalue())


def _selected(row: dict, experiments: list[str] | None) -> bool:
    """`--experiment transfer` selects the folder ``transfer`` (what `make fig-transfer` writes);
    ``ablations`` selects every ablation, ``ablations/k`` one of them."""
    name = row["experiment"]
    return not experiments or any(name == e or name.startswith(e + "/") for e in experiments)


def folders(names: list[str]) -> list[str]:
    """Results folders for `--experiment`: a figure's name (`python -m experiments.core.registry
    --names`) stands for the folders its runs write, ``regularization`` for ``regularization_lm``
    and ``regularization_mlp``; any other name is a folder itself."""
    out = []
    for name in names:
        entry = registry.EXPERIMENTS.get(name)
        out += sorted({part.results_folder for part in entry.parts}) if entry else [name]
    return out


def compare(reference: list[dict], results: list[dict], experiments: list[str] | None = None
            ) -> tuple[list[str], list[str]]:
    """(problems, notes): mismatches and missing rows; results that have no reference row."""
    ref = {_key(r): r for r in reference
           if _selected(r, experiments) and not r["experiment"].startswith(ARCHIVED)}
    got = {_key(r): r for r in results if _selected(r, experiments)}
    problems, notes = [], []
    for key, r in ref.items():
        if r["metric"] in NOT_COMPARED:
            continue
        if key not in got:
            problems.append(f"missing  {'/'.join(key)}: reference {r['value']!r}, no complete run")
        elif not _equal(got[key]["value"], r["value"]):
            problems.append(f"mismatch {'/'.join(key)}: reference {r['value']!r}, got {got[key]['value']!r}")
    new_runs = sorted({(k[0], k[1]) for k in got if k not in ref})
    notes += [f"new      {e}/{run}: not in the reference" for e, run in new_runs]
    return problems, notes


def _equal(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


# ----------------------------------------------------------------------------- commands

def check(profile: str, results_dir: str | Path, experiments: list[str] | None,
          file: Path | None = None) -> int:
    vendor = determinism.cpu_vendor()
    own = vendor_path(profile, vendor)
    no_own_file = file is None and not own.exists()  # so checked against the published reference
    file = file or (path(profile) if no_own_file else own)
    reference = read(file)
    if not reference:
        print(f"{file}: no reference rows; run `python -m experiments.reporting.reference update`")
        return 1
    known = sorted({r["experiment"].partition("/")[0] for r in reference})
    empty = [e for e in experiments or [] if not any(_selected(r, [e]) for r in reference)]
    if empty:
        raise UserError(f"--experiment {','.join(empty)}: no such results folder in {file}; "
                        f"known: {', '.join(known)} (or a figure's name, e.g. regularization)")
    problems, notes = compare(reference, collect(results_dir, profile), experiments)
    if no_own_file:
        notes.insert(0, f"note: {file} was recorded on {RECORDED_ON[profile]} CPUs and this one is "
                        f"{vendor}'s, which has no {own.name}: MKL rounds differently on the two, "
                        f"and training can amplify it, so values differ (docs/determinism.md#intel-and-amd)")
    elif file == own and own != path(profile):
        notes.insert(0, f"reference for this CPU vendor ({vendor}): {own.relative_to(FOLDER.parents[1])}")
    for line in notes:
        print(line)
    for line in problems:
        print(line)
    compared = sum(1 for r in reference if _selected(r, experiments) and r["metric"] not in NOT_COMPARED)
    print(f"reference check ({profile}{', ' + ','.join(experiments) if experiments else ''}): "
          f"{compared - len(problems)} of {compared} values equal, {len(problems)} mismatched or missing")
    return 1 if problems else 0


def update(profile: str, results_dir: str | Path, experiments: list[str] | None,
           file: Path | None = None, merge: bool = False) -> int:
    """Rewrite the reference from the complete runs under `results_dir` (only the selected
    experiments' rows when `experiments` is given). With `merge`, rows of runs that are not under
    `results_dir` are kept: a profile whose runs are made at different times (``cpu``: hours of
    runs, which results/ need not keep all of) is recorded run by run."""
    file = file or vendor_path(profile)
    fresh = [r for r in collect(results_dir, profile) if _selected(r, experiments)]
    fresh_runs = {(r["experiment"], r["run"]) for r in fresh}
    kept = [r for r in read(file)
            if (merge and (r["experiment"], r["run"]) not in fresh_runs)
            or (experiments and not _selected(r, experiments)) or r["experiment"].startswith(ARCHIVED)]
    write(file, kept + fresh)
    print(f"{file}: {len(fresh)} rows from {results_dir} ({len(kept)} kept)")
    return 0


def slice_commands() -> list[list[str]]:
    """The CI slice's commands, from slice.toml: ``[[run]] module = "...", args = [...]``."""
    with open(FOLDER / "slice.toml", "rb") as f:
        return [["-m", run["module"], *run["args"]] for run in tomllib.load(f)["run"]]


def run_slice(results_dir: str | Path | None, update_reference: bool = False) -> int:
    """Run the CI slice into `results_dir` (a fresh temporary folder by default), then check it
    against this CPU vendor's reference (or, with `update_reference`, record it there)."""
    vendor = determinism.cpu_vendor()
    file = slice_file(vendor)
    if not update_reference and not file.exists():
        raise UserError(f"{file}: no slice reference for this machine's CPU vendor ({vendor}); "
                        f"record one on a clean checkout with `python -m experiments.reporting.reference "
                        f"slice --update`")
    print(f"slice reference for this CPU vendor ({vendor}): {file.relative_to(FOLDER.parents[1])}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="multirate-slice-") as tmp:
        root = Path(results_dir or tmp)
        for cmd in slice_commands():
            full = [sys.executable, *cmd, f"results_dir={root}", "wandb=disabled"]
            print("$", " ".join(full[1:]), flush=True)
            if subprocess.run(full).returncode != 0:
                print(f"slice run failed: {' '.join(full[1:])}")
                return 1
        if update_reference:
            return update("quick", root, None, file)
        return check("quick", root, None, file)


def slice_file(vendor: str | None = None) -> Path:
    """The CI slice's reference for a CPU vendor (this machine's by default)."""
    return FOLDER / f"slice-{vendor or determinism.cpu_vendor()}.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare results with the committed reference, or update it.")
    parser.add_argument("command", choices=("check", "update", "slice", "kernels"))
    # Checked below, not by argparse: an unknown profile is one line naming it and the allowed ones
    # (argparse's choices would print its usage block too), and nothing is written.
    parser.add_argument("--profile", default="quick", help=f"one of {', '.join(PROFILES)} (default: quick)")
    parser.add_argument("--experiment", default=None, help="comma-separated results folders (default: all)")
    parser.add_argument("--results-dir", default=None, help="default: results (slice: a temporary folder)")
    parser.add_argument("--update", action="store_true",
                        help="slice: rewrite this CPU vendor's slice-<vendor>.csv instead of checking")
    parser.add_argument("--merge", action="store_true",
                        help="update: keep the reference rows of runs that are not under the results folder")
    args = parser.parse_args(argv)
    if args.command == "kernels":  # this machine's kernels on record (CI prints them beside the slice)
        fingerprints = determinism.kernel_fingerprints()
        print(json.dumps({**determinism.environment(), **fingerprints}, indent=1))
        return 0
    if args.profile not in PROFILES:
        raise UserError(f"--profile {args.profile!r}: not a profile; one of {', '.join(PROFILES)}")
    experiments = folders([e.strip() for e in args.experiment.split(",")]) if args.experiment else None
    if args.command == "check":
        return check(args.profile, args.results_dir or "results", experiments)
    if args.command == "update":
        return update(args.profile, args.results_dir or "results", experiments, merge=args.merge)
    return run_slice(args.results_dir, args.update)


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)
