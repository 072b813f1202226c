"""Record every evaluation: a tidy CSV and a JSON status file per run, plus W&B if available.

Layout under ``results/<profile>/<experiment>/``: ``<run_name>.csv`` (one row per
evaluation and metric) and ``<run_name>.json`` (config, status, versions, times).
W&B runs go to ``results/<profile>/wandb/``. W&B is optional: the CSV is the record.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import netrc
import os
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from experiments.config import RunConfig
from experiments.files import atomic_open

COLUMNS = ("run", "experiment", "method", "seed", "epoch", "step", "metric", "value", "time_s")
_TYPES = {"seed": int, "epoch": int, "step": int, "value": float, "time_s": float}

_wandb_failed = False  # after one failed wandb.init, stay CSV-only for this process


def now() -> str:
    """Current UTC time in ISO format."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Atomically write `rows` (dicts with COLUMNS) as a CSV; floats keep full precision."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # str(float) is repr: it round-trips exactly
    with atomic_open(path, "w") as f:
        f.write(buf.getvalue())


def read_rows(path: str | Path) -> list[dict]:
    """Read one run CSV back into typed row dicts."""
    with open(path, newline="") as f:
        return [{k: _TYPES.get(k, str)(v) for k, v in row.items()} for row in csv.DictReader(f)]


def last_epoch(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run at its last evaluated epoch (tidy rows, as `read_results` gives them)."""
    return rows[rows.epoch == rows.groupby("run").epoch.transform("max")]


def read_results(folder: str | Path, only_complete: bool = False) -> pd.DataFrame:
    """Concatenate all run CSVs in `folder` into one tidy DataFrame.

    With `only_complete`, keep only runs whose JSON status is "complete".
    """
    frames = []
    for path in sorted(Path(folder).glob("*.csv")):
        if only_complete:
            status_file = path.with_suffix(".json")
            if not status_file.exists() or json.loads(status_file.read_text())["status"] != "complete":
                continue
        frame = pd.read_csv(path, dtype={"run": str, "experiment": str, "method": str, "metric": str})
        if len(frame):  # a run that has not evaluated yet has only the header
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)


def read_runs(folder: str | Path) -> pd.DataFrame:
    """One row per run in `folder`: its name, status and every config field (from the run JSONs).

    Join it to `read_results` on "run" to split results by any config field.
    """
    records = [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))]
    return pd.DataFrame([{"run": r["run"], "status": r["status"], **r["config"]} for r in records])


def read_status(cfg: RunConfig) -> str | None:
    """Status recorded in the run's JSON ("running"/"complete"/"diverged"), or None."""
    path = cfg.run_dir / f"{cfg.run_name}.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


def wandb_mode(setting: str) -> str:
    """Resolve cfg.wandb to "online", "offline" or "disabled".

    "auto" is online only if the user configured W&B: WANDB_MODE set (honoured as is),
    WANDB_API_KEY set, or an api.wandb.ai entry in ~/.netrc; otherwise offline.
    """
    if setting != "auto":
        return setting
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        return {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        rc = netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc")
        return "online" if rc.authenticators("api.wandb.ai") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def _warn_wandb(err: Exception) -> None:
    global _wandb_failed
    if not _wandb_failed:
        warnings.warn(f"W&B disabled, logging to CSV only: {err!r}", RuntimeWarning, stacklevel=3)
    _wandb_failed = True


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
        self._wandb = None

    def start(self, device: str | torch.device) -> None:
        """Mark the run as running, rewrite the CSV with the restored rows, open W&B."""
        self.device = str(device)
        self._write_json("running")
        # Rows logged after the checkpoint we resume from are about to be recomputed.
        write_csv(self.csv_path, self.rows)
        self._wandb = self._wandb_init()

    def log(self, epoch: int, step: int, time_s: float, metrics: dict[str, float]) -> None:
        """Append one row per metric, rewrite the CSV atomically, send to W&B."""
        cfg = self.cfg
        for metric, value in metrics.items():
            self.rows.append(dict(run=cfg.run_name, experiment=cfg.experiment, method=cfg.method,
                                  seed=cfg.seed, epoch=epoch, step=step, metric=metric,
                                  value=float(value), time_s=float(time_s)))
        write_csv(self.csv_path, self.rows)
        if self._wandb is not None:
            try:
                self._wandb.log({**metrics, "epoch": epoch, "time_s": time_s}, step=step)
            except Exception as err:  # W&B must never stop training
                _warn_wandb(err)
                self._wandb = None

    def finish(self, status: str | None) -> None:
        """Record the final status ("complete"/"diverged"; None leaves "running") and close W&B."""
        if status is not None:
            self._write_json(status, finished=now())
        if self._wandb is not None:
            with contextlib.suppress(Exception):
                self._wandb.finish(exit_code=0 if status == "complete" else 1)
            self._wandb = None

    def _write_json(self, status: str, finished: str | None = None) -> None:
        record = {"run": self.cfg.run_name, "status": status, "config": asdict(self.cfg),
                  "torch": torch.__version__, "device": self.device, "started": self.started,
                  "finished": finished, "wandb_id": self.wandb_id}
        with atomic_open(self.json_path, "w") as f:
            json.dump(record, f, indent=2, default=str)

    def _wandb_init(self) -> Any:
        cfg = self.cfg
        mode = wandb_mode(cfg.wandb)
        if mode == "disabled" or _wandb_failed:
            return None
        try:
            import wandb
        except ImportError:
            return None
        os.environ.setdefault("WANDB_SILENT", "true")
        root = Path(cfg.results_dir) / cfg.profile  # wandb adds its own "wandb/" below this
        root.mkdir(parents=True, exist_ok=True)
        try:
            run = wandb.init(
                project=cfg.wandb_project, name=cfg.run_name, config=asdict(cfg), dir=str(root),
                mode=mode, id=self.wandb_id, resume="allow" if self.wandb_id else None,
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as err:
            _warn_wandb(err)
            return None
        self.wandb_id = run.id
        self._write_json("running")
        return run

