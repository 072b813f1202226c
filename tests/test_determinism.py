"""The determinism contract (experiments/core/determinism.py): pinned CPU kernels, fixed threads,
caches keyed by their source; and the committed reference that holds the results to it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.core import determinism
from experiments.reporting import readme_tables, reference

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env) -> str:
    """Run `code` in a fresh interpreter (the pins act before torch is imported) and return stdout."""
    full = {k: v for k, v in os.environ.items() if k not in determinism.X86_PINS and k != determinism.NATIVE}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


CAPABILITY = "import experiments, torch; print(torch.backends.cpu.get_cpu_capability())"


@pytest.mark.skipif(not determinism.has_avx2(), reason="pinning applies to x86-64 CPUs with AVX2")
def test_importing_experiments_pins_the_kernels_before_torch_starts():
    assert _python(CAPABILITY) == "AVX2"
    env = _python("import experiments, os; print(os.environ['ONEDNN_MAX_CPU_ISA'], os.environ['MKL_CBWR'])")
    assert env == "AVX2 AVX2"


@pytest.mark.skipif(not determinism.has_avx2(), reason="pinning applies to x86-64 CPUs with AVX2")
def test_a_users_setting_and_the_native_switch_win():
    assert _python(CAPABILITY, ATEN_CPU_CAPABILITY="default") == "DEFAULT"
    native = _python("import experiments, os; print(os.environ.get('ATEN_CPU_CAPABILITY'))",
                     MULTIRATE_NATIVE_CPU="1")
    assert native == "None"


def test_apply_sets_threads_and_deterministic_mode():
    code = ("import experiments, torch; from experiments.core.config import RunConfig; "
            "from experiments.core.determinism import apply; apply(RunConfig(threads=1, "
            "deterministic=True)); "
            "print(torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())")
    assert _python(code, OMP_NUM_THREADS="2") == "1 True"


def test_code_key_changes_with_the_source(tmp_path, monkeypatch):
    module = tmp_path / "cache_source.py"
    module.write_text("def produce():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import cache_source

    before = determinism.code_key(cache_source.produce)
    assert before == determinism.code_key(cache_source)  # the same file
    module.write_text("def produce():\n    return 2\n")
    assert determinism.code_key(cache_source.produce) != before


def test_pretraining_caches_are_keyed_by_code():
    from experiments.transfer import TransferConfig, pretrain_spec
    from experiments.transfer_text import TextTransferConfig
    from experiments.transfer_text import pretrain_spec as text_spec

    assert len(pretrain_spec(TransferConfig())["code"]) == 16
    assert len(text_spec(TextTransferConfig())["code"]) == 16


# ----------------------------------------------------------------------------- the reference

def _rows(epochs=3, **final):
    rows = []
    for e in range(1, epochs + 1):
        for metric, value in {"test_accuracy": 50.0 + e, "val_loss": [2.0, 1.5, 1.7][e - 1], **(
                final if e == epochs else {})}.items():
            rows.append(dict(run="m-seed0-x", experiment="x", method="m", seed=0, epoch=e, step=10 * e,
                             metric=metric, value=value, time_s=1.5 * e))
    return rows


def test_summarize_takes_the_last_evaluation_and_the_best_validation_epoch():
    s = reference.summarize(_rows())
    assert s["test_accuracy"] == 53.0 and s["time_s"] == 4.5
    assert s["val_loss@min"] == 1.5 and s["val_loss@min_epoch"] == 2.0 and s["test_accuracy@best_val"] == 52.0
    assert [s[f"val_loss@epoch{e}"] for e in (1, 2, 3)] == [2.0, 1.5, 1.7]  # the whole curve
    assert "test_accuracy@epoch1" not in s


def _ref(value, metric="test_accuracy", run="r1"):
    return dict(experiment="transfer", run=run, method="m", seed=0, metric=metric, value=value)


def test_compare_is_exact_and_ignores_times():
    assert reference.compare([_ref(78.52)], [_ref(78.52)]) == ([], [])
    problems, _ = reference.compare([_ref(78.52)], [_ref(78.52 + 1e-12)])
    assert len(problems) == 1 and problems[0].startswith("mismatch transfer/r1/test_accuracy")
    assert reference.compare([_ref(10.0, "time_s")], [_ref(99.0, "time_s")]) == ([], [])


def test_compare_reports_missing_and_new_runs_and_selects_experiments():
    problems, notes = reference.compare([_ref(1.0)], [_ref(1.0, run="r2")])
    assert problems[0].startswith("missing  transfer/r1") and notes[0].startswith("new      transfer/r2")
    ablation = dict(_ref(2.0), experiment="ablations/k/transfer")
    assert len(reference.compare([ablation], [], ["ablations"])[0]) == 1
    assert len(reference.compare([ablation], [], ["ablations/k"])[0]) == 1
    assert reference.compare([ablation], [], ["transfer"]) == ([], [])  # what make fig-transfer writes


def test_experiment_names_a_figure_or_a_folder_and_an_unknown_one_is_an_error(tmp_path, monkeypatch):
    assert reference.folders(["regularization", "transfer", "ablations/k"]) == [
        "regularization_lm", "regularization_mlp", "transfer", "ablations/k"]
    file = tmp_path / "ref.csv"
    reference.write(file, [_ref(1.0)])
    # A name that selects nothing must not pass as "0 of 0 values equal".
    message = r"--experiment regularization_lm: no such .*known: transfer"
    with pytest.raises(reference.UserError, match=message):
        reference.check("quick", tmp_path, ["regularization_lm"], file)


def test_collect_reads_complete_runs_and_update_check_round_trip(tmp_path):
    from experiments.core.runlog import write_csv

    folder = tmp_path / "quick" / "transfer"
    folder.mkdir(parents=True)
    for name, status in (("m-seed0-x", "complete"), ("m-seed1-x", "running")):
        write_csv(folder / f"{name}.csv", [dict(r, run=name) for r in _rows()])
        (folder / f"{name}.json").write_text(f'{{"run": "{name}", "status": "{status}", "config": {{}}}}')
    rows = reference.collect(tmp_path, "quick")
    assert {r["run"] for r in rows} == {"m-seed0-x"}
    file = tmp_path / "ref.csv"
    reference.update("quick", tmp_path, None, file)
    assert reference.read(file) == rows
    assert reference.check("quick", tmp_path, None, file) == 0
    write_csv(folder / "m-seed0-x.csv", [dict(r, run="m-seed0-x", value=78.0) for r in _rows()])
    assert reference.check("quick", tmp_path, None, file) == 1


def test_update_merge_keeps_the_runs_that_are_not_under_results(tmp_path):
    from experiments.core.runlog import write_csv

    folder = tmp_path / "cpu" / "patch"
    folder.mkdir(parents=True)
    file = tmp_path / "ref.csv"

    def finish(name, value):
        write_csv(folder / f"{name}.csv", [dict(r, run=name, value=value) for r in _rows()])
        (folder / f"{name}.json").write_text(f'{{"run": "{name}", "status": "complete", "config": {{}}}}')

    finish("a-seed0-x", 1.0)
    reference.update("cpu", tmp_path, None, file)
    (folder / "a-seed0-x.csv").unlink()  # later: results/ is gone, another run is done
    (folder / "a-seed0-x.json").unlink()
    finish("b-seed0-x", 2.0)
    reference.update("cpu", tmp_path, None, file, merge=True)
    assert {r["run"] for r in reference.read(file)} == {"a-seed0-x", "b-seed0-x"}
    finish("b-seed0-x", 3.0)  # rerun: its rows are replaced, not duplicated
    reference.update("cpu", tmp_path, None, file, merge=True)
    b = [r for r in reference.read(file) if r["run"] == "b-seed0-x" and r["metric"] == "test_accuracy"]
    assert [r["value"] for r in b] == [3.0]
    reference.update("cpu", tmp_path, None, file)  # without merge: only what is under results/
    assert {r["run"] for r in reference.read(file)} == {"b-seed0-x"}


def test_the_committed_reference_is_tidy():
    rows = reference.read(reference.path("quick"))
    assert rows, "experiments/reference/quick.csv is empty"
    keys = [(r["experiment"], r["run"], r["metric"]) for r in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_readme_tables_equal_the_reference():
    text = readme_tables.README.read_text()
    assert readme_tables.BLOCK.search(text), "README.md has no reference blocks"
    assert readme_tables.render(text, readme_tables.Runs(reference.read(reference.path("quick")))) == text, (
        "README.md's tables differ from experiments/reference/quick.csv: run "
        "`python -m experiments.reporting.readme_tables`")


def test_a_cpu_block_renders_from_the_cpu_reference():
    row = dict(experiment="patch", run="small_lr-seed0-x", method="small_lr", seed=0)
    cpu = readme_tables.Runs([dict(row, metric=m, value=v) for m, v in (
        ("clean_accuracy", 40.0), ("patched_accuracy", 90.0), ("patch_only_accuracy", 97.5))])
    text = ("<!-- reference:patch-cpu -->\nold\n<!-- /reference -->\n"
            "<!-- reference:patch -->\nold\n<!-- /reference -->\n")
    out = readme_tables.render(text, readme_tables.Runs([]), {"cpu": cpu})
    assert "| small h (0.004) | 40.0 | 90.0 | 97.5 |" in out.split("<!-- reference:patch -->")[0]
    assert out.split("<!-- reference:patch -->")[1].startswith("\nnot run\n")  # the quick rows: none
    with pytest.raises(ValueError, match="unknown reference block 'nope-cpu'"):
        readme_tables.render("<!-- reference:nope-cpu -->\n<!-- /reference -->", cpu, {"cpu": cpu})


def test_a_patch_table_with_unequal_seeds_says_how_many_each_row_holds():
    rows = [dict(experiment="patch", run=f"{m}-seed{seed}-x", method=m, seed=seed, metric=metric, value=v)
            for m, seeds in (("small_lr", (0, 1)), ("multirate_bn", (0,)))
            for seed in seeds for metric, v in (("clean_accuracy", 40.0 + seed), ("patched_accuracy", 90.0),
                                                ("patch_only_accuracy", 97.5))]
    table = readme_tables.blocks()["patch-partitions"](readme_tables.Runs(rows))
    assert table.splitlines()[0] == ("| method (final accuracy %, mean ± sd) | seeds | clean | with patch "
                                     "| patch only |")
    assert "| small h (0.004) | 2 | 40.5 ± 0.7 | 90.0 ± 0.0 | 97.5 ± 0.0 |" in table
    assert "| Multirate, batch-norm parameters fast | 1 | 40.0 | 90.0 | 97.5 |" in table


def test_slice_commands_name_experiment_modules():
    commands = reference.slice_commands()
    assert {c[1] for c in commands} >= {
        "experiments.transfer", "experiments.transfer_text", "experiments.patch",
        "experiments.regularization_lm", "experiments.regularization_mlp", "experiments.convergence"}


@pytest.mark.parametrize("command", ["update", "check", "slice"])
def test_an_unknown_profile_is_refused_in_one_line_and_nothing_is_written(command, tmp_path, capsys,
                                                                         monkeypatch):
    """`update --profile X` wrote a new CSV into the repository; then argparse's refusal printed its
    usage block above the error."""
    from experiments.core import errors

    before = sorted(p.name for p in reference.FOLDER.iterdir())
    argv = ["reference", command, "--profile", "medium", "--results-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        errors.cli(reference.main)
    (line,) = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and "--profile 'medium'" in line and "quick, cpu, paper" in line
    assert sorted(p.name for p in reference.FOLDER.iterdir()) == before and not any(tmp_path.iterdir())


@pytest.mark.parametrize("vendor_id,expected", [("GenuineIntel", "intel"), ("AuthenticAMD", "amd"),
                                                ("HygonGenuine", "hygongenuine")])
def test_cpu_vendor_reads_the_vendor_as_mkl_tells_them_apart(tmp_path, vendor_id, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor_id}\nflags\t\t: fpu avx2\n")
    assert determinism.cpu_vendor(cpuinfo) == expected
    assert determinism.cpu_vendor(tmp_path / "absent") == determinism.platform.machine().lower()


@pytest.mark.parametrize("vendor", ["amd", "intel"])
def test_each_vendors_slice_reference_holds_every_slice_run(vendor):
    """Both vendors' slice references are recorded from the same slice.toml: a slice run added, or
    one whose config (and so its name) changed, must be recorded for both."""
    rows = reference.read(reference.slice_file(vendor))
    other = reference.read(reference.slice_file("intel" if vendor == "amd" else "amd"))
    runs = lambda rows: {(r["experiment"], r["run"]) for r in rows}  # noqa: E731
    assert rows and runs(rows) == runs(other)
    modules = {c[1].removeprefix("experiments.") for c in reference.slice_commands()}
    folders = {r["experiment"] for r in rows}
    assert folders == modules - {"transfer_text"}  # DistilBERT's run writes to the transfer folder


def test_a_slice_on_a_cpu_vendor_with_no_reference_is_refused_before_any_run(monkeypatch):
    from experiments.core.errors import UserError

    monkeypatch.setattr(determinism, "cpu_vendor", lambda: "hygongenuine")
    monkeypatch.setattr(reference.subprocess, "run", lambda *a, **k: pytest.fail("a slice run started"))
    with pytest.raises(UserError, match=r"slice-hygongenuine\.csv: no slice reference .* --update"):
        reference.run_slice(None)


def test_each_vendor_checks_and_updates_its_own_quick_reference(tmp_path, monkeypatch, capsys):
    assert reference.RECORDED_ON["quick"] == "amd"
    assert reference.vendor_path("quick", "amd") == reference.path("quick")
    assert reference.vendor_path("quick", "intel").name == "quick-intel.csv"
    assert reference.vendor_path("cpu", "intel") == reference.path("cpu")  # no vendor on record
    intel_file = "reference for this CPU vendor (intel): experiments/reference/quick-intel.csv"
    for vendor, first_line in [("amd", "missing  convergence/"), ("intel", intel_file)]:
        monkeypatch.setattr(determinism, "cpu_vendor", lambda vendor=vendor: vendor)
        reference.check("quick", tmp_path, ["convergence"])  # no results: every row missing
        assert capsys.readouterr().out.splitlines()[0].startswith(first_line)
    # `update` on an Intel machine writes Intel's file, never the published one
    monkeypatch.setattr(reference, "FOLDER", tmp_path / "reference")
    (tmp_path / "reference").mkdir()
    monkeypatch.setattr(determinism, "cpu_vendor", lambda: "intel")
    reference.update("quick", tmp_path / "results", None)
    assert [p.name for p in (tmp_path / "reference").iterdir()] == ["quick-intel.csv"]


def test_a_check_on_a_vendor_with_no_reference_of_its_own_says_so_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(determinism, "cpu_vendor", lambda: "hygongenuine")
    reference.check("quick", tmp_path, ["convergence"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("note: ") and "recorded on amd CPUs and this one is hygongenuine's" in first
    assert "no quick-hygongenuine.csv" in first


def test_the_intel_quick_reference_holds_the_published_references_runs():
    """A vendor's quick reference records the same runs as the published one (archived rows aside):
    a change that moves a number, or renames a run, is recorded on both vendors."""
    keys = lambda rows: {(r["experiment"], r["run"], r["metric"]) for r in rows  # noqa: E731
                         if not r["experiment"].startswith(reference.ARCHIVED)}
    published = reference.read(reference.path("quick"))
    intel = reference.read(reference.vendor_path("quick", "intel"))
    assert intel and keys(intel) == keys(published)


def test_kernel_fingerprints_are_short_hashes_that_repeat_in_one_process():
    import torch

    threads = torch.get_num_threads()
    try:
        first, second = determinism.kernel_fingerprints(), determinism.kernel_fingerprints()
    finally:
        torch.set_num_threads(threads)
    assert first == second
    hashes = {k: v for k, v in first.items() if not k.endswith("_rows_equal")}
    assert set(hashes) == {"mkl_sgemm", "mkl_dgemm", "mkl_lapack", "exp_log", "aten_sum", "onednn_conv"}
    assert all(len(v) == 12 and int(v, 16) >= 0 for v in hashes.values())
    assert all(isinstance(first[k], bool) for k in ("mkl_sgemm_rows_equal", "onednn_conv_rows_equal"))
