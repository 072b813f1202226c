"""The runs a figure, the report or a table leaves out, and why, so that each can say so: a method
drawn from 2 seeds because a third diverged must not read like a method that ran twice.

The figures and the report draw complete runs only
    (`experiments.core.runlog.read_results(only_complete=True)`);
every other run in a results folder is left out: "diverged at epoch N" (the runner logs the
non-finite training loss against the epoch it happened in) or "not finished" (still running, or
stopped before its end). `figures.left_out` adds the figures' table column.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from experiments.core.runlog import read_results, read_runs

COLUMNS = ["method", "seed", "reason"]


def nothing(extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """No run left out (what a figure drawn from given rows, not a folder, is told)."""
    return pd.DataFrame(columns=[*COLUMNS, *extra])


def runs(folder: str | Path, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per run under `folder` that is not complete: its method, seed, why it is left out,
    and the config fields `extra` (e.g. "model", to tell a transfer figure's columns apart)."""
    folder = Path(folder)
    records = read_runs(folder)
    columns = [*COLUMNS, *extra]
    if records.empty or (records.status == "complete").all():
        return nothing(extra)
    records = records[records.status != "complete"]
    rows = read_results(folder)
    last_epoch = rows.groupby("run").epoch.max() if not rows.empty else pd.Series(dtype=int)
    out = []
    for _, r in records.iterrows():
        if r.status == "diverged":
            epoch = last_epoch.get(r.run)
            reason = f"diverged at epoch {int(epoch)}" if epoch is not None else "diverged"
        else:
            reason = "not finished"
        out.append(dict(method=r.method, seed=int(r.seed), reason=reason, **{k: r.get(k, "") for k in extra}))
    return pd.DataFrame(out, columns=columns).sort_values(["method", "seed"]).reset_index(drop=True)


def by_method(left: pd.DataFrame, complete: pd.DataFrame, keys: tuple[str, ...] = ("method",)) -> dict:
    """Per method (per value of `keys`) with runs left out: "2 of 3 seeds, seed 1 diverged at epoch 4"
    (`complete`: the rows of the complete runs, with the `keys` columns and seed)."""
    out = {}
    for key, runs_left in left.groupby(list(keys)):
        key = key if len(keys) > 1 else key[0]
        same = complete
        for column, value in zip(keys, key if len(keys) > 1 else (key,)):
            same = same[same[column] == value] if not same.empty else same
        drawn = same.seed.nunique() if not same.empty else 0
        why = ", ".join(f"seed {s} {reason}" for s, reason in zip(runs_left.seed, runs_left.reason))
        total = drawn + len(runs_left)
        out[key] = f"{drawn} of {total} seed{'s' if total != 1 else ''}, {why}"
    return out


def described(left: pd.DataFrame, complete: pd.DataFrame, name: Callable[[str], str]) -> list[str]:
    """"SGD: 2 of 3 seeds, seed 1 diverged at epoch 4", one per method with runs left out (`name`
    gives the method's name in the figure)."""
    return [f"{name(m)}: {text}" for m, text in by_method(left, complete).items()]


def note(parts: list[str]) -> str:
    """The line about what a figure or table leaves out, from `described` ("" when it leaves out
    nothing)."""
    return "left out: " + "; ".join(parts) if parts else ""

