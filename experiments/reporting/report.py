"""Reproduction report: results/<profile>/REPORT.md, the paper's numbers beside ours.

    python -m experiments.reporting.report [--profile quick|paper] [--results-dir results]

Without --profile, writes a report for every profile that has a results folder. Each report links
every figure under results/<profile>/figures/ (relative links) and has a table per experiment:
the paper's number (``Experiment.paper`` in ``experiments/core/registry.py``, which cites the paper's
section and figure of each; read off the paper's plots, about ±0.5 point and ±5 % in time), ours
(mean ± sd over seeds of complete runs, at the final epoch; for the language model also the minimum
validation loss over epochs) and ours - paper.
The difference is printed only where ours ran on the paper's data set (CIFAR, SST-2, PTB, MNIST):
on a generated task an accuracy or a loss is not comparable with the paper's, so the column says
"other task", and the claims section at the top compares what is (gaps, ratios, rises).
An experiment without complete runs says "not run". Every section says which runs it left out and
why (diverged at epoch N, not finished: `experiments.reporting.left_out`), and so does the claims table.
Times are hardware-specific, so the transfer tables compare the time relative to train-all of the
same model, not seconds.

The sections follow ``experiments.core.registry.EXPERIMENTS``: each experiment's ``report`` function
(``results/<profile> -> Markdown``), or, for one that names none, `generic_section` (the final value
of each metric it is judged by, per method, mean ± sd over seeds); then the ablations (their tables
come from ``experiments.ablations``, as the ablation figures' do) and the figures.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from experiments.ablations import final_rows, grids, left_out_runs, summarise
from experiments.core import registry
from experiments.core.config import PROFILES
from experiments.core.runlog import last_epoch, read_results, read_runs
from experiments.reporting import claims, left_out
from experiments.reporting.readme_tables import Runs
from experiments.reporting.reference import collect

PAPER_NOTE = ("paper: ~ read off the paper's plots (about ±0.5 point, ±5 % in time); the section and "
              "figure of each: experiments/core/registry.py")
TRANSFER_TASK = {"resnet50": "ResNet-50 on CIFAR-100", "resnet34": "ResNet-34 on CIFAR-10",
                 "small_resnet": "small ResNet on the generated task (a DIFFERENT task from the paper's)",
                 "distilbert": "DistilBERT"}


def fmt(mean: float, sd: float = float("nan"), digits: int = 2) -> str:
    """`mean ± sd` (sd left out when it is NaN, as for one seed); "—" for a missing mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.{digits}f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd:.{digits}f}")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(map(str, r)) + " |" for r in rows)])


def complete_runs(folder: Path) -> pd.DataFrame:
    """Rows of the complete runs in `folder` with every config field of their run (from the JSONs)."""
    rows = read_results(folder, only_complete=True)
    if rows.empty:
        return rows
    runs = read_runs(folder).drop(columns=["experiment", "method", "seed"], errors="ignore")
    return rows.merge(runs, on="run")


def per_method(values: pd.DataFrame, by: list[str] = ("method",)) -> pd.DataFrame:
    """Mean, sd and number of seeds of `value` (and mean `time_s`) per `by`."""
    return (values.groupby(list(by), sort=False)
            .agg(mean=("value", "mean"), sd=("value", "std"), time_s=("time_s", "mean"),
                 seeds=("seed", "nunique"))
            .reset_index())


OTHER_TASK = "other task"  # the diff column where our data set is not the paper's


def _diff(ours: float, paper: float | None, digits: int = 2, same_task: bool = True) -> str:
    """ours - paper; "other task" where our data set is not the paper's (the values are not comparable)."""
    if paper is None or math.isnan(ours):
        return "—"
    return f"{ours - paper:+.{digits}f}" if same_task else OTHER_TASK


def transfer_section(root: Path) -> str:
    rows = complete_runs(root / "transfer")
    if rows.empty:
        return "## Transfer learning\n\n### ResNet\n\nnot run\n\n### DistilBERT\n\nnot run\n"
    acc = last_epoch(rows[rows.metric.isin(["test_accuracy", "accuracy", "val_accuracy"])])
    parts = ["## Transfer learning\n",
             "Accuracy: final-epoch test accuracy (%). Time: training time relative to train-all of the same "
             "model (the paper's seconds are from other hardware)."]
    for model, group in acc.groupby("model", sort=False):
        # The quick profile's small ResNet stands in for ResNet-50: its differences are across tasks.
        paper_key = {"resnet50": "transfer_resnet50", "small_resnet": "transfer_resnet50",
                     "distilbert": "transfer_distilbert"}.get(model)
        paper = registry.paper().get(paper_key, {})
        stats = per_method(group)
        same_task = group.dataset.iloc[0] in ("cifar100", "cifar10", "sst2")
        reference = "distilbert_train_all" if model == "distilbert" else "train_all"
        ref_time = stats.set_index("method").time_s.get(reference, float("nan"))
        paper_ref = paper.get(reference, {}).get("time")
        body = []
        for _, s in stats.iterrows():
            p = paper.get(s.method, {})
            ours_rel = s.time_s / ref_time
            paper_rel = p["time"] / paper_ref if "time" in p and paper_ref else None
            body.append([s.method, s.seeds, fmt(p.get("accuracy")), fmt(s["mean"], s.sd),
                         _diff(s["mean"], p.get("accuracy"), same_task=same_task), fmt(paper_rel),
                         fmt(ours_rel),
                         _diff(ours_rel, paper_rel), f"{s.time_s:.0f}"])
        task = TRANSFER_TASK.get(model, model)
        note = "" if paper else " (the paper has no numbers for this setting: differences are not defined)"
        if model == "distilbert" and group.dataset.iloc[0] != "sst2":
            task = f"DistilBERT-shaped model on {group.dataset.iloc[0]} (a DIFFERENT task from SST-2)"
            note = ": compare the ordering and the time ratios, not the accuracies"
        if model == "small_resnet":
            note = (" (paper: ResNet-50 on CIFAR-100, so the differences are across tasks: compare the "
                    "ordering and the time ratios, not the accuracies)")
        parts.append(f"### {task}{note}\n\n" + table(
            ["method", "seeds", "paper acc", "ours acc", "diff", "paper time/train-all",
             "ours time/train-all", "diff", "ours time (s)"], body))
    is_text = acc.model == "distilbert"
    for name, present in (("ResNet", (~is_text).any()), ("DistilBERT", is_text.any())):
        if not present:
            parts.append(f"### {name}\n\nnot run")
    return "\n\n".join(parts) + "\n"


def patch_section(root: Path) -> str:
    rows = complete_runs(root / "patch")
    if rows.empty:
        return "## Patch-augmented data (latent time scales)\n\nnot run\n"
    metrics = ["clean_accuracy", "patched_accuracy", "patch_only_accuracy"]
    stats = per_method(last_epoch(rows[rows.metric.isin(metrics)]), ["method", "metric"])
    same_task = rows.dataset.iloc[0] == "cifar10"
    body = []
    for _, s in stats.iterrows():
        paper = registry.paper()["patch"].get(s.method, {}).get(s.metric)
        body.append([s.method, s.metric, s.seeds, fmt(paper), fmt(s["mean"], s.sd),
                     _diff(s["mean"], paper, same_task=same_task)])
    task = "CIFAR-10, WRN-16" if rows.dataset.iloc[0] == "cifar10" else \
        "generated patch task, WRN-16-1 (a DIFFERENT, smaller task than the paper's CIFAR-10)"
    return (f"## Patch-augmented data (latent time scales)\n\n{task}; final-epoch accuracy (%).\n\n"
            + table(["method", "test set", "seeds", "paper", "ours", "diff"], body) + "\n")


def regularization_section(root: Path) -> str:
    parts = ["## Regularisation (random subgroups)\n"]
    rows = complete_runs(root / "regularization_lm")
    if rows.empty:
        parts.append("### Transformer language model\n\nnot run")
    else:
        val = rows[rows.metric == "val_loss"]
        lowest = val.groupby("run", as_index=False).agg(value=("value", "min"), method=("method", "first"),
                                                       seed=("seed", "first"), time_s=("time_s", "max"))
        same_task = rows.dataset.iloc[0] == "ptb"
        body = []
        for name, values in (("min_val_loss", lowest), ("final_val_loss", last_epoch(val))):
            for _, s in per_method(values).iterrows():
                paper = registry.paper()["regularization_lm"].get(s.method, {}).get(name)
                body.append([s.method, name, s.seeds, fmt(paper), fmt(s["mean"], s.sd, 3),
                             _diff(s["mean"], paper, 3, same_task)])
        task = "Penn Treebank" if rows.dataset.iloc[0] == "ptb" else \
            "generated text (a DIFFERENT task from the paper's Penn Treebank: compare the curves' shapes)"
        parts.append(f"### Transformer language model: validation loss, {task}\n\n"
                     + table(["method", "metric", "seeds", "paper", "ours", "diff"], body))
    rows = complete_runs(root / "regularization_mlp")
    if rows.empty:
        parts.append("### Perceptron\n\nnot run")
    else:
        same_task = rows.dataset.iloc[0] == "mnist"
        body = []
        for _, s in per_method(last_epoch(rows[rows.metric == "test_accuracy"])).iterrows():
            paper = registry.paper()["regularization_mlp"].get(s.method, {}).get("test_accuracy")
            body.append([s.method, s.seeds, fmt(paper), fmt(s["mean"], s.sd),
                         _diff(s["mean"], paper, same_task=same_task)])
        task = "MNIST" if rows.dataset.iloc[0] == "mnist" else \
            "generated images (a DIFFERENT task from the paper's MNIST: compare the ordering)"
        parts.append(f"### Perceptron: final test accuracy (%), {task}\n\n"
                     + table(["method", "seeds", "paper", "ours", "diff"], body))
    return "\n\n".join(parts) + "\n"


def convergence_section(root: Path) -> str:
    path = root / "convergence" / "convergence.csv"
    if not path.exists():
        return "## Convergence check (Theorem B.4)\n\nnot run\n"
    rows = pd.read_csv(path)
    body = [[r.method, r.k, r.T, fmt(r.measured, r.measured_sd, 5), f"{r.bound:.5f}",
             f"{r.bound - r.measured:+.5f}", "yes" if r.measured <= r.bound else "NO"]
            for r in rows.itertuples()]
    return ("## Convergence check (Theorem B.4)\n\nThe paper proves the bound; ours: measured "
            "(1/T) Σ‖∇f(θ_t)‖² (mean ± sd over seeds) against the bound from the measured L and M.\n\n"
            + table(["method", "k", "T", "measured", "bound", "bound - measured", "holds"], body) + "\n")


def generic_section(experiment: registry.Experiment, root: Path) -> str:
    """For an experiment without a section of its own: per part, the final-epoch value of each
    metric it is judged by (every metric if it names none), per method; no paper numbers."""
    parts = [f"## {experiment.title or experiment.name}\n"]
    for part in experiment.parts:
        rows = complete_runs(root / part.results_folder)
        if not rows.empty and part.metrics:
            rows = rows[rows.metric.isin(part.metrics)]
        if rows.empty:
            parts.append(f"### {part.name}\n\nnot run")
            continue
        body = [[s.method, s.metric, s.seeds, fmt(s["mean"], s.sd), f"{s.time_s:.1f}"]
                for _, s in per_method(last_epoch(rows), ["method", "metric"]).iterrows()]
        parts.append(f"### {part.name}: final-epoch values (no paper numbers)\n\n"
                     + table(["method", "metric", "seeds", "ours", "time (s)"], body))
    return "\n\n".join(parts) + "\n"


def section(experiment: registry.Experiment, root: Path) -> str:
    """The experiment's report section: its own function (the registry's ``report``), else generic;
    then the runs of its folders that it left out, and why."""
    own = registry.resolve(experiment.report) if experiment.report else None
    text = own(root) if own else generic_section(experiment, root)
    return text + left_out_note(root, experiment.run_folders)


def left_out_note(root: Path, folders: list[str]) -> str:
    """"Left out of `patch`: multirate: 2 of 3 seeds, seed 1 diverged at epoch 4." per folder under
    `root` with runs that are not complete (`experiments.reporting.left_out`); "" when there are none."""
    lines = []
    for folder in folders:
        left = left_out.runs(root / folder)
        if not left.empty:
            parts = left_out.described(left, read_results(root / folder, only_complete=True), str)
            lines.append(f"\nLeft out of `{folder}`: {'; '.join(parts)}.\n")
    return "".join(lines)


def ablation_left_out(name: str, results_dir: Path, profile: str, final: pd.DataFrame) -> str:
    """A paragraph "Left out: SGD k=5: 0 of 1 seed, seed 0 diverged at epoch 2." for the runs of
    ablation `name` that its table leaves out (`final`: its complete runs' rows); "" if there are none."""
    texts = left_out.by_method(left_out_runs(name, results_dir, profile), final, ("label",))
    return f"\n\nLeft out: {'; '.join(f'{label}: {text}' for label, text in texts.items())}." if texts else ""


def ablation_section(results_dir: Path, profile: str) -> str:
    parts = []
    final_k = final_rows("k", results_dir, profile)
    if final_k.empty:
        parts.append("## Ablations: k\n\nnot run" + ablation_left_out("k", results_dir, profile, final_k))
    else:
        k = summarise(final_k, "k")
        paper = registry.paper()["transfer_resnet50"]
        paper_speedup = paper["train_all"]["time"] / paper["multirate"]["time"]
        paper_gap = paper["multirate"]["accuracy"] - paper["train_all"]["accuracy"]
        body = [[r.base, r.label, r.k if r.optimizer.startswith("multirate") else "train-all", r.seeds,
                 fmt(r.value, r.value_sd), f"{r.time_s:.1f}", f"{r.speedup:.2f}", f"{r.accuracy_gap:+.2f}"]
                for r in k.itertuples()]
        parts.append(
            "## Ablations: k (transfer setting, fast = fc, linear drift)\n\n"
            f"Paper (ResNet-50/CIFAR-100, k not stated): speed-up {paper_speedup:.2f}, accuracy gap "
            f"{paper_gap:+.1f} points; the paper has no k ablation to compare with.\n\n"
            + table(["base", "variant", "k", "seeds", "accuracy", "time (s)", "speed-up", "gap to train-all"],
                    body) + ablation_left_out("k", results_dir, profile, final_k))
    for name in (n for n in grids() if n != "k"):
        final_ = final_rows(name, results_dir, profile)
        if final_.empty:
            parts.append(f"## Ablations: {name}\n\nnot run"
                         + ablation_left_out(name, results_dir, profile, final_))
            continue
        body = [[r.label, r.metric, r.seeds, fmt(r.value, r.value_sd), f"{r.time_s:.1f}"]
                for r in summarise(final_, name).itertuples()]
        parts.append(f"## Ablations: {name} (no paper numbers)\n\n"
                     + table(["variant", "metric", "seeds", "ours (final)", "time (s)"], body)
                     + ablation_left_out(name, results_dir, profile, final_))
    return "\n\n".join(parts) + "\n"


def claims_section(results_dir: Path, profile: str) -> str:
    """Each claim of the paper as the quantity it is about, per seed, with its verdict
    (experiments/reporting/claims.py), from the complete runs under results/<profile>, and the seeds it left
    out and why."""
    runs = Runs(collect(results_dir, profile))
    folders = {folder for e in registry.EXPERIMENTS.values() for folder in e.run_folders}
    left = {folder: left_out.runs(results_dir / profile / folder) for folder in sorted(folders)}
    return ("## The paper's claims\n\n" + claims.table({profile: runs}, missing="—", left_out={profile: left})
            + "\n### Sensitivity of each verdict (held-out trials of the comparison protocol)\n\n"
            + claims.sensitivity_table(runs))


def report(results_dir: str | Path, profile: str) -> str:
    """The Markdown text of results/<profile>/REPORT.md."""
    results_dir = Path(results_dir)
    root = results_dir / profile
    figures = sorted((root / "figures").glob("*.png"))
    figure_text = "\n\n".join(f"### {f.stem}\n\n![{f.stem}](figures/{f.name})" for f in figures)
    sections = [f"# Reproduction report: {profile} profile\n", PAPER_NOTE + ".\n",
                claims_section(results_dir, profile),
                *(section(experiment, root) for experiment in registry.EXPERIMENTS.values()),
                ablation_section(results_dir, profile),
                "## Figures\n\n" + (figure_text or "no figures") + "\n"]
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, choices=PROFILES,
                        help="default: every profile with results")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)
    profiles = [args.profile] if args.profile else [
        p for p in PROFILES if (Path(args.results_dir) / p).is_dir()]
    written = []
    for profile in profiles:
        path = Path(args.results_dir) / profile / "REPORT.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report(args.results_dir, profile))
        print(f"wrote {path}")
        written.append(path)
    return written


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)
