"""Record every evaluation: a tidy CSV and a JSON status file per run, plus W&B if available.

Layout under ``results/<profile>/<experiment>/``: ``<run_name>.csv`` (one row per
evaluation and metric) and ``<run_name>.json`` (config, status, versions, times).
W&B (``experiments.core.tracking``) is optional: the CSV is the record.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import platform
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from experiments.core import accel, determinism, tracking
from experiments.core.config import RunConfig
from experiments.core.errors import UserError
from experiments.core.files import atomic_open, sha256_bytes, sha256_file
from experiments.core.tracking import wandb_mode  # noqa: F401 (re-exported: runlog.wandb_mode)

COLUMNS = ("run", "experiment", "method", "seed", "epoch", "step", "metric", "value", "time_s")
_TYPES = {"seed": int, "epoch": int, "step": int, "value": float, "time_s": float}


def now() -> str:
    """Current UTC time in ISO format."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class ResultError(UserError):
    """A run's CSV or JSON that is missing, unreadable or not what its JSON recorded."""


def write_csv(path: str | Path, rows: list[dict]) -> str:
    """Atomically write `rows` (dicts with COLUMNS) as a CSV; floats keep full precision.

    Returns the SHA-256 of the bytes written."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # str(float) is repr: it round-trips exactly
    data = buf.getvalue().encode()
    with atomic_open(path, "wb") as f:
        f.write(data)
    return sha256_bytes(data)


def read_rows(path: str | Path) -> list[dict]:
    """Read one run CSV back into typed row dicts (ResultError naming the file if it is malformed)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is not None and tuple(reader.fieldnames) != COLUMNS:
                raise ValueError(f"its header is {reader.fieldnames}, not {list(COLUMNS)}")
            return [{k: _TYPES.get(k, str)(v) for k, v in row.items()} for row in reader]
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as err:
        raise ResultError(f"{path} is damaged ({err}): {_REMEDY}") from None


_REMEDY = "rerun with rerun=true to train the run again, or delete the file"


def read_record(path: str | Path) -> dict:
    """A run JSON, or ResultError naming the file if it cannot be parsed."""
    try:
        record = json.loads(Path(path).read_text())
        if not isinstance(record, dict) or not {"run", "status", "config"} <= set(record):
            raise ValueError("not a run record")
        return record
    except (ValueError, UnicodeDecodeError) as err:
        raise ResultError(f"{path} is damaged ({' '.join(str(err).split())}): delete it and the run's "
                          "CSV, then rerun to train the run again") from None


def check_csv(record: dict, csv_path: str | Path) -> str | None:
    """What is wrong with a finished run's CSV against its JSON record (None: nothing, or a record
    from before the CSV's SHA-256 was kept): "missing" or a one-line description of the damage."""
    if record.get("csv_sha256") is None:
        return None
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return "missing"
    if sha256_file(csv_path) == record["csv_sha256"]:
        return None
    rows = max(0, len(csv_path.read_bytes().splitlines()) - 1)
    return (f"{csv_path} is damaged or was edited: it holds {rows} rows, its record "
            f"{csv_path.with_suffix('.json').name} says {record['csv_rows']} with another SHA-256; {_REMEDY}")


def last_epoch(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run at its last evaluated epoch (tidy rows, as `read_results` gives them)."""
    return rows[rows.epoch == rows.groupby("run").epoch.transform("max")]


def read_results(folder: str | Path, only_complete: bool = False) -> pd.DataFrame:
    """Concatenate all run CSVs in `folder` into one tidy DataFrame, verified against their JSONs.

    With `only_complete`, keep only runs whose JSON status is "complete". A finished run's CSV that
    is missing, or differs from the row count and SHA-256 its JSON recorded, and a CSV or JSON that
    cannot be parsed, raise ResultError naming the file and the remedy.
    """
    folder = Path(folder)
    records = {path.stem: read_record(path) for path in sorted(folder.glob("*.json"))}
    for name, record in records.items():
        _verify(record, folder / f"{name}.csv")
    frames = []
    for path in sorted(folder.glob("*.csv")):
        record = records.get(path.stem)
        if only_complete and (record is None or record["status"] != "complete"):
            continue
        try:
            frame = pd.read_csv(path, dtype={"run": str, "experiment": str, "method": str, "metric": str})
            if tuple(frame.columns) != COLUMNS:
                raise ValueError(f"its header is {list(frame.columns)}, not {list(COLUMNS)}")
            frame = frame.astype({k: t for k, t in _TYPES.items()})
        except (ValueError, TypeError, UnicodeDecodeError, pd.errors.ParserError) as err:
            raise ResultError(f"{path} is damaged ({' '.join(str(err).split())[:200]}): {_REMEDY}") from None
        if len(frame):  # a run that has not evaluated yet has only the header
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)


def read_run(json_path: str | Path) -> tuple[dict, list[dict]]:
    """One run's JSON record and its CSV rows, verified: a finished run's CSV that is missing or not
    what its JSON recorded, and a file that cannot be parsed, raise ResultError naming the file."""
    record = read_record(json_path)
    csv_path = Path(json_path).with_suffix(".csv")
    _verify(record, csv_path)
    return record, read_rows(csv_path) if csv_path.exists() else []


def _verify(record: dict, csv_path: Path) -> None:
    """Raise ResultError if a finished run's CSV is missing or not what its record says."""
    problem = check_csv(record, csv_path) if record["status"] in ("complete", "diverged") else None
    if problem == "missing":
        raise ResultError(f"{csv_path} of a {record['status']} run is missing: rerun the experiment to "
                          f"restore it, or delete {csv_path.with_suffix('.json')}")
    if problem is not None:
        raise ResultError(problem)


def no_complete_runs(folder: str | Path) -> str:
    """Why `read_results(folder, only_complete=True)` is empty, as one line for a figure or report:
    nothing ran yet, or every run diverged or is still running (say which)."""
    folder = Path(folder)
    statuses = [read_record(p)["status"] for p in sorted(folder.glob("*.json"))]
    if not statuses:
        return f"no complete runs under {folder}: nothing has run there yet; run the experiments first"
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    return f"no complete runs under {folder} ({counts}): see the runs' JSON files there; nothing to plot"


def read_runs(folder: str | Path) -> pd.DataFrame:
    """One row per run in `folder`: its name, status and every config field (from the run JSONs).

    Join it to `read_results` on "run" to split results by any config field.
    """
    records = [read_record(path) for path in sorted(Path(folder).glob("*.json"))]
    return pd.DataFrame([{"run": r["run"], "status": r["status"], **r["config"]} for r in records])


def read_status(cfg: RunConfig) -> str | None:
    """Status recorded in the run's JSON ("running"/"complete"/"diverged"), or None."""
    path = cfg.run_dir / f"{cfg.run_name}.json"
    return read_record(path)["status"] if path.exists() else None


def environment() -> dict:
    """What a run's bits may depend on besides its config: torch version, thread count, CPU kernel
    family (and its pins), the code's git commit, Python version."""
    return {**determinism.environment(), "git_commit": git_commit(), "python": platform.python_version()}


@functools.cache  # once per process: the code does not change under a running process
def git_commit() -> str | None:
    """Short sha of this checkout's HEAD, plus "+dirty" if tracked files changed; None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class RunLog:
    """CSV + JSON (+ W&B) record of one run; `rows` restores what a checkpoint had logged."""

    def __init__(self, cfg: RunConfig, rows: list[dict] = (), started: str | None = None,
                 wandb_id: str | None = None):
        self.cfg = cfg
        self.rows = [dict(r) for r in rows]
        self.csv_path = cfg.run_dir / f"{cfg.run_name}.csv"
        self.json_path = cfg.run_dir / f"{cfg.run_name}.json"
        self.started = started or now()
        self.wandb_id = wandb_id
        self.device = "cpu"
        self.resolved = {}  # device-dependent options as run (amp = "auto" -> "bf16" or "none")
        self.csv_sha256 = None  # of the CSV as last written
        self._wandb = None

    def start(self, device: str | torch.device) -> None:
        """Mark the run as running, rewrite the CSV with the restored rows, open W&B. An option
        chosen by the device ("auto") is said in the run's first line."""
        self.device = str(device)
        self.resolved = accel.resolved_options(self.cfg, torch.device(device))
        chosen = [f"{k}={v} ({getattr(self.cfg, k)})" for k, v in self.resolved.items()
                  if getattr(self.cfg, k) != v]
        if chosen:
            print(f"{self.cfg.run_name}: on {self.device}: {', '.join(chosen)}", flush=True)
        self._write_json("running")
        # Rows logged after the checkpoint we resume from are about to be recomputed.
        self.csv_sha256 = write_csv(self.csv_path, self.rows)
        self._wandb = tracking.init(self.cfg, self.wandb_id, self.resolved)
        if self._wandb is not None:
            self.wandb_id = self._wandb.id
            self._write_json("running")

    def log(self, epoch: int, step: int, time_s: float, metrics: dict[str, float]) -> None:
        """Append one row per metric, rewrite the CSV atomically, send to W&B."""
        cfg = self.cfg
        for metric, value in metrics.items():
            self.rows.append(dict(run=cfg.run_name, experiment=cfg.experiment, method=cfg.method,
                                  seed=cfg.seed, epoch=epoch, step=step, metric=metric,
                                  value=float(value), time_s=float(time_s)))
        self.csv_sha256 = write_csv(self.csv_path, self.rows)
        self._wandb = tracking.log(self._wandb, epoch, step, time_s, metrics)
        tracking.print_epoch(cfg, epoch, step, time_s, metrics)

    def finish(self, status: str | None, checkpoint_sha256: str | None = None) -> None:
        """Record the final status ("complete"/"diverged"; None leaves "running") with the CSV's row
        count and SHA-256 (and the kept checkpoint's), and close W&B."""
        if status is not None:
            self._write_json(status, finished=now(), checkpoint_sha256=checkpoint_sha256)
        tracking.finish(self._wandb, status)
        self._wandb = None

    def _write_json(self, status: str, finished: str | None = None,
                    checkpoint_sha256: str | None = None) -> None:
        record = {"run": self.cfg.run_name, "status": status, "config": asdict(self.cfg),
                  **environment(), "device": self.device, "resolved": self.resolved, "started": self.started,
                  "finished": finished, "wandb_id": self.wandb_id}
        if finished is not None:  # what readers verify the run's files against
            record.update(csv_rows=len(self.rows), csv_sha256=self.csv_sha256,
                          checkpoint_sha256=checkpoint_sha256)
        with atomic_open(self.json_path, "w") as f:
            json.dump(record, f, indent=2, default=str)
