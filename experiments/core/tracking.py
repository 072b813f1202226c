"""W&B for one run (optional: the CSV that `experiments.core.runlog` writes is the record), and the
one line per evaluation printed when stdout is not a terminal.

A run's W&B fields say where it belongs on a dashboard:

- ``group``: ``<experiment>/<method>`` (``transfer/multirate``), or the config's ``variant`` when it
  is set: ablation and sweep runs set it to ``<ablation or sweep name>/<variant label>``
  (``k/SGD k=25``), so that a variant is never averaged with the main runs of its method;
- ``job_type``: the experiment; ``tags``: the profile, and the ablation or sweep name (the part of
  ``variant`` before its first ``/``) if any;
- ``define_metric``: every metric is charted against ``epoch``, and ``time_s`` (training time) is
  logged beside it as the other x-axis; the headline metrics also keep their best value in the
  summary (``HEADLINE``): the highest test and clean accuracy, the lowest validation loss.

W&B runs go to ``results/<profile>/wandb/``. After one failed ``wandb.init`` (no network, a bad
key) this process stays CSV-only, with one warning.
"""

from __future__ import annotations

import contextlib
import netrc
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experiments.core.config import RunConfig

# metric -> the summary W&B keeps besides the last value ("max": the best accuracy, "min": the best loss)
HEADLINE = {"test_accuracy": "max", "clean_accuracy": "max", "val_loss": "min"}
X_AXES = ("epoch", "time_s")  # logged with every evaluation

_failed = False  # after one failed wandb.init, stay CSV-only for this process


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


def group(cfg: RunConfig) -> str:
    """The W&B group: the variant label if set, else ``<experiment>/<method>``."""
    return cfg.variant or f"{cfg.experiment}/{cfg.method}"


def tags(cfg: RunConfig) -> list[str]:
    """The W&B tags: the profile, then the ablation or sweep name (``variant`` before its first "/")."""
    return [cfg.profile, *([cfg.variant.partition("/")[0]] if cfg.variant else [])]


def _warn(err: Exception) -> None:
    global _failed
    if not _failed:
        warnings.warn(f"W&B disabled, logging to CSV only: {err!r}", RuntimeWarning, stacklevel=3)
    _failed = True


def init(cfg: RunConfig, run_id: str | None = None, resolved: dict | None = None) -> Any:
    """Start (or, given the `run_id` of an earlier start, resume) the W&B run of `cfg`; None when
    W&B is disabled, not installed, or failed before. `resolved`: the device-dependent options as
    run (``{"amp": "bf16"}`` for amp = "auto" on a GPU), in the W&B config beside cfg's fields."""
    mode = wandb_mode(cfg.wandb)
    if mode == "disabled" or _failed:
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
            project=cfg.wandb_project, name=cfg.run_name, config={**asdict(cfg), "resolved": resolved or {}},
            dir=str(root),
            group=group(cfg), job_type=cfg.experiment, tags=tags(cfg),
            mode=mode, id=run_id, resume="allow" if run_id else None,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )
        for axis in X_AXES:
            run.define_metric(axis)
        run.define_metric("*", step_metric="epoch")  # every chart against epoch, not the step
        for metric, best in HEADLINE.items():
            run.define_metric(metric, step_metric="epoch", summary=f"{best},last")
    except Exception as err:
        _warn(err)
        return None
    return run


def log(run: Any, epoch: int, step: int, time_s: float, metrics: dict[str, float]) -> Any:
    """Send one evaluation to `run` (None: nothing to do); returns `run`, or None once it failed."""
    if run is None:
        return None
    try:
        run.log({**metrics, "epoch": epoch, "time_s": time_s}, step=step)
    except Exception as err:  # W&B must never stop training
        _warn(err)
        return None
    return run


def finish(run: Any, status: str | None) -> None:
    """Close `run` (None: nothing to do), failed unless `status` is "complete"."""
    if run is not None:
        with contextlib.suppress(Exception):
            run.finish(exit_code=0 if status == "complete" else 1)


def epoch_line(cfg: RunConfig, epoch: int, step: int, time_s: float, metrics: dict[str, float]) -> str:
    """``<run>: epoch 3/15 step 138 12.4 s train_loss=0.4127 test_accuracy=81.2`` (no metrics: the
    line ends after the time, for an epoch without evaluation)."""
    shown = "".join(f" {k}={v:.4g}" for k, v in metrics.items())
    return f"{cfg.run_name}: epoch {epoch}/{cfg.epochs} step {step} {time_s:.1f} s{shown}"


def print_epoch(cfg: RunConfig, epoch: int, step: int, time_s: float, metrics: dict[str, float],
                stream=None) -> None:
    """Print `epoch_line` when `stream` (stdout) is not a terminal: a Slurm .out file then gets
    one line per evaluation (a terminal has the progress bar)."""
    stream = stream or sys.stdout
    if not stream.isatty():
        print(epoch_line(cfg, epoch, step, time_s, metrics), file=stream, flush=True)
