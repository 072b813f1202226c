"""The runs a figure leaves out, and why (`experiments.reporting.left_out`, which the report and the claims
table read too), and the ``left_out`` column of a figure's table."""

from __future__ import annotations

import pandas as pd

# The figures' names for the shared logic
from experiments.reporting.left_out import COLUMNS, by_method, described, note, nothing, runs  # noqa: F401


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
