"""The reproduction report (experiments.reporting.report) from synthetic run logs."""

import pandas as pd

from experiments.core import registry
from experiments.core.config import load_config
from experiments.core.runlog import RunLog
from experiments.patch import TOML as PATCH_TOML
from experiments.patch import PatchConfig
from experiments.regularization_lm import TOML as LM_TOML
from experiments.regularization_lm import LMConfig
from experiments.reporting import report
from experiments.transfer import TOML as TRANSFER_TOML
from experiments.transfer import TransferConfig


def log(cls, toml, method, seed, tmp_path, series, seconds=10.0, overrides=(), status="complete"):
    """A run (complete unless `status` says otherwise) whose epochs log `series` ({metric: [value
    per epoch]})."""
    cfg = load_config(cls, toml, "quick", method,
                      [f"results_dir={tmp_path}", f"seed={seed}", "wandb=disabled", *overrides])
    run = RunLog(cfg)
    run.start("cpu")
    epochs = len(next(iter(series.values())))
    for epoch in range(1, epochs + 1):
        run.log(epoch, 10 * epoch, seconds * epoch / epochs, {m: v[epoch - 1] for m, v in series.items()})
    run.finish(status)


def patch_run(tmp_path, method, seed, clean, dataset="generated", status="complete"):
    log(PatchConfig, PATCH_TOML, method, seed, tmp_path,
        {"clean_accuracy": [10.0, clean], "patched_accuracy": [10.0, clean + 20],
         "patch_only_accuracy": [10.0, 95.0]}, overrides=[f"dataset={dataset}"], status=status)


def test_report_numbers_differences_and_missing_experiments(tmp_path, monkeypatch):
    patch_run(tmp_path, "small_lr", 0, 70.0, "cifar10")
    patch_run(tmp_path, "small_lr", 1, 72.0, "cifar10")
    text = report.report(tmp_path, "quick")
    assert "| small_lr | clean_accuracy | 2 | 68.00 | 71.00 ± 1.41 | +3.00 |" in text
    assert "| small_lr | patched_accuracy | 2 | 93.00 | 91.00 ± 1.41 | -2.00 |" in text
    assert "| small_lr | patch_only_accuracy | 2 | 98.50 | 95.00 ± 0.00 | -3.50 |" in text
    # ResNet and DistilBERT transfer, LM, perceptron, convergence, the five ablations, and the
    # sensitivity of the verdicts (no tuning trials)
    assert text.count("not run") == 11
    # The difference is computed from the registry's paper numbers, not typed in.
    monkeypatch.setitem(registry.EXPERIMENTS["patch"].paper["patch"], "small_lr", {"clean_accuracy": 60.0})
    text = report.report(tmp_path, "quick")
    assert "| small_lr | clean_accuracy | 2 | 60.00 | 71.00 ± 1.41 | +11.00 |" in text
    assert "| small_lr | patched_accuracy | 2 | — | 91.00 ± 1.41 | — |" in text


def test_no_accuracy_difference_across_tasks(tmp_path):
    # On the generated patch task the paper's CIFAR-10 accuracies are shown, never subtracted.
    patch_run(tmp_path, "small_lr", 0, 70.0)
    text = report.report(tmp_path, "quick")
    assert "| small_lr | clean_accuracy | 1 | 68.00 | 70.00 | other task |" in text
    assert "+2.00" not in text


def test_language_model_min_and_final_validation_loss(tmp_path):
    log(LMConfig, LM_TOML, "sgd", 0, tmp_path, {"val_loss": [5.2, 4.80, 4.90]}, overrides=["dataset=ptb"])
    log(LMConfig, LM_TOML, "sgd", 1, tmp_path, {"val_loss": [5.0, 4.82, 5.00]}, overrides=["dataset=ptb"])
    text = report.report(tmp_path, "quick")
    assert "| sgd | min_val_loss | 2 | 4.85 | 4.810 ± 0.014 | -0.040 |" in text
    assert "| sgd | final_val_loss | 2 | 4.97 | 4.950 ± 0.071 | -0.020 |" in text
    assert "Penn Treebank" in text


def test_language_model_on_generated_text_is_not_subtracted_from_ptb(tmp_path):
    log(LMConfig, LM_TOML, "sgd", 0, tmp_path, {"val_loss": [5.2, 4.80, 4.90]})
    text = report.report(tmp_path, "quick")
    assert "| sgd | min_val_loss | 1 | 4.85 | 4.800 | other task |" in text
    assert "generated text (a DIFFERENT task" in text


def test_transfer_times_relative_to_train_all(tmp_path):
    log(TransferConfig, TRANSFER_TOML, "train_all", 0, tmp_path, {"test_accuracy": [50.0, 80.0]}, 100.0)
    log(TransferConfig, TRANSFER_TOML, "multirate", 0, tmp_path, {"test_accuracy": [40.0, 79.0]}, 40.0)
    text = report.report(tmp_path, "quick")
    paper = registry.paper()["transfer_resnet50"]
    paper_ratio = paper["multirate"]["time"] / paper["train_all"]["time"]
    diff = 0.40 - paper_ratio
    # The time ratio is compared across tasks; the accuracy (generated task vs CIFAR-100) is not.
    row = f"| multirate | 1 | 83.40 | 79.00 | other task | {paper_ratio:.2f} | 0.40 | {diff:+.2f} | 40 |"
    assert row in text
    assert "small ResNet on the generated task (a DIFFERENT task" in text
    assert "### DistilBERT\n\nnot run" in text


def test_main_writes_a_report_per_profile_with_results_and_links_figures(tmp_path):
    patch_run(tmp_path, "large_lr", 0, 65.0)
    figures = tmp_path / "quick" / "figures"
    figures.mkdir(parents=True)
    (figures / "patch.png").write_bytes(b"png")
    pd.DataFrame({"a": [1]}).to_csv(figures / "patch.csv")
    written = report.main(["--results-dir", str(tmp_path)])
    assert written == [tmp_path / "quick" / "REPORT.md"]  # no paper results, no paper report
    text = written[0].read_text()
    assert "![patch](figures/patch.png)" in text
    assert "| large_lr | clean_accuracy | 1 | 72.00 | 65.00 | other task |" in text


def test_the_report_says_which_runs_it_left_out_and_why(tmp_path):
    for seed in (0, 1, 2):
        patch_run(tmp_path, "multirate", seed, 70.0)
        patch_run(tmp_path, "small_lr", seed, 60.0, status="diverged" if seed == 1 else "complete")
    patch_run(tmp_path, "large_lr", 0, 65.0, status="running")
    text = report.report(tmp_path, "quick")
    # The patch section: its table holds the complete runs, the line below it what it left out ...
    assert "| small_lr | clean_accuracy | 2 |" in text
    assert ("Left out of `patch`: large_lr: 0 of 1 seed, seed 0 not finished; "
            "small_lr: 2 of 3 seeds, seed 1 diverged at epoch 2.") in text
    # ... and the claims table says which seeds its values come from, and why the others are missing.
    assert "(2 of 3 seeds; small_lr seed 1 diverged at epoch 2)" in text
    assert "Left out" not in report.report(tmp_path / "nothing", "quick")


def test_the_report_reads_a_results_folder_with_the_convergence_check_in_it(tmp_path):
    """`make figures` ends with the report after `make convergence`, whose folder holds a table and
    its config (convergence.json), not run records: the report failed there, calling it damaged."""
    from experiments import convergence

    convergence.main(["steps=20", "seeds=0", "ks=2", f"results_dir={tmp_path}", "wandb=disabled"])
    assert (tmp_path / "quick" / "convergence" / "convergence.json").exists()
    patch_run(tmp_path, "small_lr", 0, 70.0)
    text = report.report(tmp_path, "quick")
    assert "| small_lr | clean_accuracy | 1 |" in text
