"""Plotting scripts: tidy CSVs under results/<profile>/ -> the paper's figures.

Every script takes ``--profile quick|cpu|paper`` and ``--results-dir`` (`results_root`) and writes
``results/<profile>/figures/<name>.{png,pdf}`` plus the table behind the figure as ``<name>.csv``
(`save`). Their shared look (names, colours, notes) is `figures.style`.
"""

import argparse
from pathlib import Path

from experiments.core.config import PROFILES


def results_root(description: str, argv=None) -> Path:
    """Parse ``[--profile quick|cpu|paper] [--results-dir DIR]``; return ``DIR/<profile>``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)
    return Path(args.results_dir) / args.profile


def save(fig, table, root: Path, name: str) -> Path:
    """Write ``root/figures/<name>.png`` and ``.pdf`` (then close the figure) and, unless `table` is
    None, ``<name>.csv``; return the folder."""
    import matplotlib.pyplot as plt  # after figures.style has chosen the Agg backend (scripts import it)

    out = root / "figures"
    out.mkdir(parents=True, exist_ok=True)
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"{name}.{suffix}", dpi=150)
    plt.close(fig)
    if table is not None:
        table.to_csv(out / f"{name}.csv", index=False)
    print(f"wrote {out / name}.png, .pdf" + (" and .csv" if table is not None else ""))
    return out
