"""The runs a figure leaves out, and why, so that its note and its table can say so: a method drawn
from 2 seeds because a third diverged must not read like a method that ran twice.

A figure draws complete runs only (`experiments.runlog.read_results(only_complete=True)`); every
other run in its folder is left out: "diverged at epoch N" (the runner logs the non-finite training
loss against the epoch it happened in) or "not finished" (still running, or stopped before its end).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from experiments.runlog import read_results, read_runs

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
    """The figure's line about what it leaves out, from `described` ("" when it leaves out nothing)."""
    return "left out: " + "; ".join(parts) if parts else ""


def add_column(table: pd.DataFrame, left: pd.DataFrame, complete: pd.DataFrame,
               keys: tuple[str, ...] = ("method",)) -> pd.DataFrame:
    """`table` (one row per value of `keys`) with a ``left_out`` column, and a row for every method
    whose every run is left out (its numbers empty)."""
    texts = by_method(left, complete, keys)
    table = table.copy()
    index = list(zip(*(table[k] for k in keys))) if len(keys) > 1 else list(table[keys[0]])
    missing = [k for k in texts if k not in set(index)]
    if missing:
        new = pd.DataFrame([k if len(keys) > 1 else (k,) for k in missing], columns=list(keys))
        table = pd.concat([table, new], ignore_index=True)
        index = list(zip(*(table[k] for k in keys))) if len(keys) > 1 else list(table[keys[0]])
    table["left_out"] = [texts.get(k, "") for k in index]
    if "seeds" in table:  # a method whose every run is left out was drawn from 0 seeds
        table["seeds"] = table.seeds.fillna(0).astype(int)
    return table
