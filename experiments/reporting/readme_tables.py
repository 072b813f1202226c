"""The result tables of README.md and the docs/ pages, generated from the committed reference (never
typed in).

    python -m experiments.reporting.readme_tables           # rewrite the tables of every page
    python -m experiments.reporting.readme_tables --check   # exit 1 if a page is not up to date

A table lives between ``<!-- reference:NAME -->`` and ``<!-- /reference -->`` in any page of `pages`
(README.md and every docs/**/*.md); `blocks` maps NAME to the function that renders it from the
reference rows (`experiments.reporting.reference.read`) of the quick profile; ``NAME-cpu`` renders the same
table from the cpu profile's reference. The names come from ``experiments/core/registry.py``: each
experiment's ``tables`` (an experiment that names none has one, `generic_table`, under its own name),
``ablation-NAME`` for each of its ablations; and the claims and their sensitivity (`GENERAL`). Adding
a table is one line in its experiment's entry and the two markers in the page that shows it.
tests/test_readme.py fails when a table and the reference disagree, or when a registered table is
shown nowhere.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from experiments import protocol
from experiments.ablations import variant_config
from experiments.core import registry
from experiments.reporting import claims, reference

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- reference:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /reference -->)", re.S)

# Our method names -> the paper's (its figures' legends).
TRANSFER_NAMES = {
    "train_all": "Train All", "multirate": "**Multirate** (fast = fc, k = 5)",
    "layer2+3+4+fc": "Train Layer 2+3+4+fc", "layer3+4+fc": "Train Layer 3+4+fc",
    "layer4+fc": "Train Layer 4+fc", "fc": "Train fc only", "train_all_scratch": "Train All from scratch",
    "distilbert_train_all": "Train All", "distilbert_multirate": "**Multirate** (fast = head, k = 5)",
    "distilbert_multirate_l5": "Multirate (fast = block 5 + head)",
    "distilbert_train_345": "Train blocks 3+4+5 + head", "distilbert_train_45": "Train blocks 4+5 + head",
    "distilbert_train_5": "Train block 5 + head", "distilbert_head_only": "Train head only",
    "distilbert_untrained": "Untrained (no pretraining)",
}
PATCH_NAMES = {"small_lr": "small h (0.004)", "large_lr": "large h (0.1)",
               "multirate": "**Multirate**, deep half fast",
               "multirate_early": "Multirate, shallow half fast"}
PARTITION_NAMES = {"multirate_biases": "Multirate, biases fast",
                   "multirate_weights": "Multirate, weights fast",
                   "multirate_random_half": "Multirate, a fixed random half of every tensor fast",
                   "multirate_bn": "Multirate, batch-norm parameters fast",
                   "multirate_slow_drift_h": "Diagnostic: deep half fast, slow part drifting at h per step"}
REG_NAMES = {"sgd": "SGD", "dropout": "SGD + dropout", "multirate": "**Multirate**, random subgroups"}


class Runs:
    """The reference rows of one profile, as {experiment: {run: {"method", "seed", metric: value}}}."""

    def __init__(self, rows: list[dict]):
        self.rows = list(rows)
        self.by_experiment: dict[str, dict[str, dict]] = defaultdict(dict)
        for r in rows:
            runs = self.by_experiment[r["experiment"]]
            runs.setdefault(r["run"], dict(method=r["method"], seed=r["seed"]))[r["metric"]] = r["value"]

    def values(self, experiment: str, method: str, metric: str) -> list[float]:
        """`metric` of every seed of `method` in `experiment`, in seed order."""
        runs = sorted((r for r in self.by_experiment.get(experiment, {}).values() if r["method"] == method),
                      key=lambda r: r["seed"])
        return [r[metric] for r in runs if metric in r]

    def methods(self, experiment: str) -> list[str]:
        return sorted({r["method"] for r in self.by_experiment.get(experiment, {}).values()})


def mean_sd(values: list[float], digits: int = 2) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def _seeds(runs: Runs, experiment: str, method: str, metric: str) -> int:
    return len(runs.values(experiment, method, metric))


def transfer_table(runs: Runs, part: str) -> str:
    """Final test accuracy and training time per method; multirate's time ratio and gap to Train All."""
    methods = [m for m in TRANSFER_NAMES if m in runs.methods("transfer")
               and m.startswith("distilbert_") == (part == "distilbert")]
    if not methods:
        return "not run\n"
    all_name = "distilbert_train_all" if part == "distilbert" else "train_all"
    multi = "distilbert_multirate" if part == "distilbert" else "multirate"
    base_time = mean(runs.values("transfer", all_name, "time_s"))
    rows = []
    for m in methods:
        acc, secs = runs.values("transfer", m, "test_accuracy"), runs.values("transfer", m, "time_s")
        rows.append([TRANSFER_NAMES[m], mean_sd(acc), f"{mean(secs):.1f}", f"{mean(secs) / base_time:.2f}"])
    seeds = _seeds(runs, "transfer", multi, "test_accuracy")
    text = markdown(["method", f"final test accuracy (%), mean ± sd, {seeds} seeds", "training time (s)",
                     "time / Train All"], rows)
    a, b = runs.values("transfer", multi, "test_accuracy"), runs.values("transfer", all_name, "test_accuracy")
    if a and b:
        gap = mean(b) - mean(a)
        below = sum(x < y for x, y in zip(a, b))
        ratio = base_time / mean(runs.values("transfer", multi, "time_s"))
        text += (f"\nMultirate: {ratio:.2f}× shorter training than Train All, {gap:.2f} points below it "
                 f"(below on {below} of {len(a)} seeds); times: the same runs' training wall-clock.\n")
    return text


def patch_table(runs: Runs, names: dict[str, str] = PATCH_NAMES) -> str:
    methods = [m for m in names if m in runs.methods("patch")]
    metrics = ("clean_accuracy", "patched_accuracy", "patch_only_accuracy")
    if not methods:
        return "not run\n"
    rows = [[names[m], *(mean_sd(runs.values("patch", m, x), 1) for x in metrics)] for m in methods]
    seeds = [_seeds(runs, "patch", m, metrics[0]) for m in methods]
    header = ["clean", "with patch", "patch only"]
    if len(set(seeds)) == 1:
        return markdown([f"method (final accuracy %, mean ± sd, {seeds[0]} seeds)", *header], rows)
    # Some methods still running: say how many seeds each row holds.
    return markdown(["method (final accuracy %, mean ± sd)", "seeds", *header],
                    [[row[0], str(n), *row[1:]] for row, n in zip(rows, seeds)])


PREMISE_SETTINGS = {"P1": "the profile's table (4,000 images, 40 epochs, lr_batch = 32)",
                    "P2": "lr_batch = 16 (both step sizes twice as large)",
                    "P3": "8,000 images, 20 epochs (the same 20,000 steps)"}


def patch_premise_table(runs: Runs) -> str:
    """The patch design check that asks for the paper's premise (patch.toml), one row per setting
    tried (seed 0, final epoch), from the reference's ``design/<setting>/patch`` rows."""
    rows = []
    for name, text in PREMISE_SETTINGS.items():
        exp = f"design/{name}/patch"
        (small, small_only), (large, large_only) = (
            (runs.values(exp, m, "clean_accuracy"), runs.values(exp, m, "patch_only_accuracy"))
            for m in ("small_lr", "large_lr"))
        if not (small and large):
            continue
        passed = not claims.patch_premise_failures(small[0], small_only[0], large[0], large_only[0])
        rows.append([name, text, f"{small[0]:.1f} / {small_only[0]:.1f}",
                     f"{large[0]:.1f} / {large_only[0]:.1f}", f"{large[0] - small[0]:.1f}",
                     "passed" if passed else "FAILED"])
    if not rows:
        return "not run\n"
    return markdown(["", "setting", "small h: clean / patch-only (%)", "large h: clean / patch-only (%)",
                     "clean gap (points)", "premise"], rows)


def regularization_table(runs: Runs) -> str:
    lm, mlp = "regularization_lm", "regularization_mlp"
    methods = [m for m in REG_NAMES if m in runs.methods(lm) or m in runs.methods(mlp)]
    if not methods:
        return "not run\n"
    rows = []
    for m in methods:
        low, final = runs.values(lm, m, "val_loss@min"), runs.values(lm, m, "val_loss")
        epoch = runs.values(lm, m, "val_loss@min_epoch")
        rise = [f - lo for f, lo in zip(final, low)]
        rows.append([REG_NAMES[m], f"{mean_sd(low, 3)} ({mean(epoch):.0f})", mean_sd(final, 3),
                     mean_sd(rise, 3), mean_sd(runs.values(lm, m, "test_ppl@best_val"), 2),
                     mean_sd(runs.values(mlp, m, "test_accuracy"), 2)])
    seeds = _seeds(runs, lm, "sgd", "val_loss")
    return markdown([f"method (mean ± sd, {seeds} seeds)", "LM min val loss (epoch)", "LM final val loss",
                     "LM rise after min", "LM test ppl at best val", "perceptron final acc. (%)"], rows)


def ablation_table(runs: Runs, name: str) -> str:
    """One row per variant of ablation `name` (seed 0): its headline metrics and training time; for
    the k grid also the speed-up and the gap to the train-all row of the same base optimizer."""
    variants = registry.ablations()[name]
    parts = [registry.part(v.experiment) for v in variants]
    metrics = list(dict.fromkeys(m for p in parts for m in p.table_metrics or p.metrics))  # in order
    rows, base = [], {}
    for variant in variants:
        run = variant_config(variant, "quick", 0, "results", name).run_name
        r = runs.by_experiment.get(f"ablations/{name}/{variant.experiment}", {}).get(run)
        if r is None:
            rows.append([variant.label, *("not run" for _ in metrics), ""] + ["", ""] * (name == "k"))
            continue
        cells = [variant.label, *(f"{r[m]:.2f}" if m in r else "" for m in metrics), f"{r['time_s']:.1f}"]
        if name == "k":
            family = variant.label.split()[0]
            if "train-all" in variant.label:
                base[family] = r
            b = base.get(family)
            cells += [f"{b['time_s'] / r['time_s']:.2f}×" if b else "",
                      f"{r['test_accuracy'] - b['test_accuracy']:+.2f}" if b and r is not b else ""]
        rows.append(cells)
    header = ["variant (seed 0)", *(m.replace("_", " ") + (" (%)" if "accuracy" in m else " (nats)")
                                    for m in metrics), "time (s)"]
    return markdown(header + (["speed-up", "gap to train-all"] if name == "k" else []), rows)


def convergence_table(runs: Runs) -> str:
    exp = runs.by_experiment.get("convergence", {})
    longest = max((int(name.rsplit("-T", 1)[1]) for name in exp), default=0)
    rows = []
    for name, r in exp.items():
        method, k, t = name.rsplit("-", 2)
        if int(t[1:]) == longest:
            rows.append([method, k[1:], f"{r['measured']:.3g}", f"{r['bound']:.3g}",
                         f"{r['bound'] / r['measured']:.0f}×"])
    rows.sort(key=lambda row: (row[0] != "sgd", int(row[1])))
    header = [f"method (T = {longest})", "k", "measured (1/T)Σ‖∇f‖²", "bound", "bound / measured"]
    return markdown(header, rows)


def transfer_resnet_table(runs: Runs) -> str:
    return transfer_table(runs, "resnet")


def transfer_distilbert_table(runs: Runs) -> str:
    return transfer_table(runs, "distilbert")


def transfer_resnet_before_table(runs: Runs) -> str:
    return transfer_table(claims.before(runs), "resnet")


def transfer_distilbert_before_table(runs: Runs) -> str:
    return transfer_table(claims.before(runs), "distilbert")


def patch_partitions_table(runs: Runs) -> str:
    return patch_table(runs, {**PATCH_NAMES, **PARTITION_NAMES})


def patch_before_table(runs: Runs) -> str:
    return patch_table(claims.before(runs), {**PATCH_NAMES, **PARTITION_NAMES})


def regularization_before_table(runs: Runs) -> str:
    return regularization_table(claims.before(runs))


def protocol_transfer_table(runs: Runs) -> str:
    return protocol_tables(runs, ("transfer_resnet", "transfer_distilbert"))


def protocol_regularization_table(runs: Runs) -> str:
    return protocol_tables(runs, ("regularization_lm", "regularization_mlp"))


def generic_table(experiment: registry.Experiment, runs: Runs) -> str:
    """For an experiment that names no tables of its own: per part, method and metric it is judged by
    (`Part.metrics`), the final value, mean ± sd over seeds."""
    rows = []
    for part in experiment.parts:
        folder = part.results_folder
        for m in runs.methods(folder):
            for metric in part.metrics:
                values = runs.values(folder, m, metric)
                if values:
                    rows.append([part.name, m, metric.replace("_", " "), mean_sd(values), str(len(values))])
    if not rows:
        return "not run\n"
    return markdown(["part", "method", "metric (final)", "mean ± sd", "seeds"], rows)


GENERAL: dict[str, Callable[[Runs], str]] = {  # the tables that are no one experiment's
    "claims": lambda runs: claims_table(),
    "sensitivity": claims.sensitivity_table,
}


def blocks() -> dict[str, Callable[[Runs], str]]:
    """Block name -> the function that renders it from a profile's `Runs`, from the registry: each
    experiment's ``tables`` (or `generic_table` under its name), ``ablation-NAME`` per ablation, then
    `GENERAL`."""
    out: dict[str, Callable[[Runs], str]] = {}
    for exp in registry.EXPERIMENTS.values():
        if exp.tables:
            out.update({name: registry.load(target) for name, target in exp.tables.items()})
        else:
            out[exp.name] = functools.partial(generic_table, exp)
        out.update({f"ablation-{name}": functools.partial(ablation_table, name=name)
                    for name in exp.ablations})
    return {**out, **GENERAL}


def protocol_tables(runs: Runs, names: tuple[str, ...]) -> str:
    """Every tuning trial's held-out score per method, the choice in bold (experiments/protocol.py)."""
    out = []
    for name in names:
        p = protocol.PROTOCOLS[name]
        choices = protocol.select(p, runs.rows)
        if not any(c.scores for c in choices.values()):
            out.append(f"{name}: not run\n")
            continue
        out.append(f"{name}: held-out {p.metric}, seed 0\n\n"
                   + protocol.selection_table(p, choices))
    return "\n".join(out)


def claims_table() -> str:
    """Every claim, quick and cpu profiles side by side (a profile without a reference: "not run")."""
    return claims.table({p: Runs(reference.read(reference.path(p))) for p in ("quick", "cpu")})


PROFILE_SUFFIXES = {"-cpu": "cpu"}  # NAME-cpu: NAME's table from the cpu profile's reference


def render(text: str, runs: Runs, by_profile: dict[str, Runs] | None = None, page: str = "README.md") -> str:
    """`text` with every reference block re-rendered from `runs` (the quick profile's) or, for a
    ``NAME-cpu`` block, from ``by_profile["cpu"]`` (default: the committed cpu reference); `page`
    names the file in the error for an unknown block."""
    known = blocks()

    def block(match: re.Match) -> str:
        name, source = match["name"], runs
        for suffix, profile in PROFILE_SUFFIXES.items():
            if name.endswith(suffix) and name[: -len(suffix)] in known:
                name = name[: -len(suffix)]
                source = (by_profile or {}).get(profile) or Runs(reference.read(reference.path(profile)))
        if name not in known:
            raise ValueError(f"{page}: unknown reference block {match['name']!r}; known: {sorted(known)}"
                             f" (each also as NAME-cpu)")
        return match.group(1) + known[name](source) + match.group(4)

    return BLOCK.sub(block, text)


def pages(root: Path = ROOT) -> list[Path]:
    """Every page that may hold reference blocks: README.md, then docs/**/*.md in path order."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def shown(root: Path = ROOT) -> dict[str, list[Path]]:
    """The pages each block name appears in (``NAME-cpu`` under its own name)."""
    out: dict[str, list[Path]] = defaultdict(list)
    for page in pages(root):
        for match in BLOCK.finditer(page.read_text()):
            out[match["name"]].append(page)
    return out


def main(check_only: bool = False, root: Path = ROOT) -> int:
    """Rewrite (or, with `check_only`, check) the tables of every page; 1 if a page is out of date."""
    runs = Runs(reference.read(reference.path("quick")))
    by_profile = {"cpu": Runs(reference.read(reference.path("cpu")))}
    stale = []
    for page in pages(root):
        text = page.read_text()
        new = render(text, runs, by_profile, str(page.relative_to(root)))
        if new == text:
            continue
        stale.append(page)
        if not check_only:
            page.write_text(new)
            print(f"{page}: tables rewritten from the reference")
    if not stale:
        print(f"{len(pages(root))} pages: tables match the reference")
        return 0
    if check_only:
        print(f"{', '.join(str(p.relative_to(root)) for p in stale)}: tables differ from "
              "experiments/reference/quick.csv (or cpu.csv); run `python -m "
              "experiments.reporting.readme_tables`")
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page's tables are not up to date")
    raise SystemExit(main(check_only=parser.parse_args().check))
