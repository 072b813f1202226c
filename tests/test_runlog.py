"""Run records: exact CSV values, atomic writes, W&B offline/disabled/failing, read_results."""

import json
import struct
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.core import tracking
from experiments.core.config import RunConfig
from experiments.core.files import atomic_open
from experiments.core.runlog import COLUMNS, RunLog, read_results, read_rows, wandb_mode
from experiments.core.runner import Task, run

VALUES = [1 / 3, 0.1 + 0.2, 1e-300, 123456.789, 0.0, 2.0]


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    """W&B may only ever run offline here, with every file it writes under tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-env" / var.lower()))
    monkeypatch.setattr(tracking, "_failed", False)  # W&B code lives in experiments.core.tracking


def make_cfg(tmp_path, **kw):
    return RunConfig(**{**dict(experiment="exp", results_dir=str(tmp_path / "results"),
                               wandb="disabled"), **kw})


def log_some(cfg):
    log = RunLog(cfg)
    log.start("cpu")
    for i, value in enumerate(VALUES):
        log.log(epoch=i + 1, step=10 * (i + 1), time_s=0.5 * i + 1 / 7,
                metrics={"train_loss": value, "accuracy": 1 - value / 3})
    log.finish("complete")
    return log


def test_csv_holds_exactly_the_logged_values(tmp_path):
    cfg = make_cfg(tmp_path)
    log = log_some(cfg)
    rows = read_rows(log.csv_path)
    assert rows == log.rows and len(rows) == 2 * len(VALUES)
    assert [r["value"] for r in rows[::2]] == VALUES  # exact, not approximate
    assert list(rows[0]) == list(COLUMNS)
    frame = read_results(cfg.run_dir)
    assert frame["value"].tolist() == [r["value"] for r in rows]
    assert frame["time_s"].tolist() == [r["time_s"] for r in rows]

    record = json.loads(log.json_path.read_text())
    assert record["status"] == "complete" and record["config"]["experiment"] == "exp"
    assert record["run"] == cfg.run_name and record["started"] <= record["finished"]


def test_atomic_writes_leave_no_temp_files(tmp_path):
    cfg = make_cfg(tmp_path)
    log_some(cfg)
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == [f"{cfg.run_name}.csv", f"{cfg.run_name}.json"]

    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.glob("*file*")] == ["file.txt"]


def test_read_results_concatenates_runs(tmp_path):
    cfgs = [make_cfg(tmp_path, seed=seed) for seed in (0, 1, 2)]
    for cfg in cfgs:
        log_some(cfg)
    running = RunLog(make_cfg(tmp_path, seed=3))
    running.start("cpu")
    running.log(1, 10, 1.0, {"train_loss": 9.0})
    RunLog(make_cfg(tmp_path, seed=4)).start("cpu")  # no evaluation yet: a header-only CSV

    frame = read_results(cfgs[0].run_dir)
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 3 * 2 * len(VALUES) + 1
    assert sorted(frame["seed"].unique()) == [0, 1, 2, 3]
    assert frame["value"].dtype == "float64" and frame["step"].dtype == "int64"
    assert set(frame["run"]) == {c.run_name for c in cfgs} | {running.cfg.run_name}
    assert sorted(read_results(cfgs[0].run_dir, only_complete=True)["seed"].unique()) == [0, 1, 2]
    assert read_results(tmp_path / "nothing").empty


def test_wandb_mode_resolution(tmp_path, monkeypatch):
    assert wandb_mode("disabled") == "disabled" and wandb_mode("online") == "online"
    assert wandb_mode("auto") == "offline"  # WANDB_MODE=offline from the fixture is honoured
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode("auto") == "offline"  # nothing configured
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert wandb_mode("auto") == "online"
    monkeypatch.delenv("NETRC")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("auto") == "offline"


def read_wandb_records(path):
    """(record type, record) pairs of a .wandb file: a LevelDB-style log of protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, buf, records = path.read_bytes(), 32768, 7, b"", []  # 7-byte file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # still being written
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: one record complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            records.append((record.WhichOneof("record_type"), record))
    return records


def read_wandb_history(path, timeout=60.0):
    """Logged history of an offline run, once W&B's service has written the whole file.

    wandb.finish() can return before the separate wandb-core process has flushed the file,
    so wait for the run's exit record.
    """
    deadline = time.monotonic() + timeout
    records = read_wandb_records(path)
    while not any(kind == "exit" for kind, _ in records):
        assert time.monotonic() < deadline, f"{path} never got its exit record"
        time.sleep(0.05)
        records = read_wandb_records(path)
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for kind, record in records if kind == "history"]


class Line(Task):
    """Least squares y = 3x - 1 with a one-layer model named fc."""

    def build_model(self):
        return _Head()

    def train_tensors(self, device):
        x = torch.linspace(-1, 1, 64, device=device)[:, None]
        return x, 3 * x - 1

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    def evaluate(self, model, device):
        return {"slope": model.fc.weight.item(), "offset": model.fc.bias.item()}


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, x):
        return self.fc(x)


def test_wandb_offline_matches_csv(tmp_path):
    cfg = make_cfg(tmp_path, wandb="offline", epochs=3, batch_size=16, lr=0.1)
    result = run(cfg, Line())
    assert result["status"] == "complete"

    runs = list((tmp_path / "results" / "quick" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = read_wandb_history(next(runs[0].glob("*.wandb")))
    assert len(history) == 3
    csv_rows = read_rows(cfg.run_dir / f"{cfg.run_name}.csv")
    assert len(csv_rows) == 3 * 3
    for row in csv_rows:
        (entry,) = [h for h in history if h["_step"] == row["step"]]
        assert entry[row["metric"]] == row["value"]
        assert entry["epoch"] == row["epoch"] and entry["time_s"] == row["time_s"]
    record = json.loads((cfg.run_dir / f"{cfg.run_name}.json").read_text())
    assert record["wandb_id"] and record["wandb_id"] in runs[0].name


def test_wandb_disabled_writes_nothing(tmp_path):
    cfg = make_cfg(tmp_path, wandb="disabled", epochs=2, batch_size=16)
    assert run(cfg, Line())["status"] == "complete"
    assert not (tmp_path / "results" / "quick" / "wandb").exists()
    assert not list(tmp_path.rglob("*.wandb")) and not list(tmp_path.rglob("offline-run-*"))


def test_wandb_not_installed_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    cfg = make_cfg(tmp_path, wandb="offline")
    log = log_some(cfg)
    assert log.wandb_id is None and len(read_rows(log.csv_path)) == 2 * len(VALUES)


def test_wandb_init_failure_warns_once_and_keeps_csv(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="no network") as caught:
        log_some(make_cfg(tmp_path, wandb="offline", seed=0))
        log = log_some(make_cfg(tmp_path, wandb="offline", seed=1))
    assert len(caught) == 1
    assert [r["value"] for r in read_rows(log.csv_path)][::2] == VALUES


def test_wandb_offline_resume_continues_the_same_run(tmp_path):
    cfg = make_cfg(tmp_path, wandb="offline", epochs=3, batch_size=16, lr=0.1)
    assert run(cfg, Line(), stop_at_step=6)["status"] == "interrupted"
    assert run(cfg, Line())["status"] == "complete"

    runs = sorted((tmp_path / "results" / "quick" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.split("-")[3] for r in runs}) == 1  # same run id
    history = [h for r in runs for h in read_wandb_history(next(r.glob("*.wandb")))]
    csv_rows = read_rows(cfg.run_dir / f"{cfg.run_name}.csv")
    assert sorted(h["_step"] for h in history) == sorted({r["step"] for r in csv_rows}) == [4, 8, 12]
    for row in csv_rows:
        (entry,) = [h for h in history if h["_step"] == row["step"]]
        assert entry[row["metric"]] == row["value"]


def test_read_run_verifies_and_no_complete_runs_says_why(tmp_path):
    from experiments.core.runlog import ResultError, no_complete_runs, read_run

    cfg = make_cfg(tmp_path)
    folder = cfg.run_dir
    assert "run the experiments first" in no_complete_runs(folder)
    log = log_some(cfg)
    record, rows = read_run(log.json_path)
    assert record["status"] == "complete" and rows == log.rows and record["csv_rows"] == len(rows)
    assert {"torch", "threads", "cpu_capability", "git_commit", "python"} <= set(record)
    log.csv_path.write_text(log.csv_path.read_text().replace("0.3", "0.2", 1))
    with pytest.raises(ResultError, match=str(log.csv_path)):
        read_run(log.json_path)
    diverged = RunLog(make_cfg(tmp_path, seed=1))
    diverged.start("cpu")
    diverged.log(1, 10, 1.0, {"train_loss": float("nan")})
    diverged.finish("diverged")
    log.json_path.unlink()
    message = no_complete_runs(folder)
    assert "1 diverged" in message and "run the experiments first" not in message


def test_an_option_chosen_by_the_device_is_said_first_and_recorded(tmp_path, capsys):
    """amp = "auto" is resolved when the run starts: the choice is the run's first line and in its JSON."""
    cfg = make_cfg(tmp_path, amp="auto")
    log_some(cfg)
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"{cfg.run_name}: on cpu: amp=none (auto)"
    record = json.loads((cfg.run_dir / f"{cfg.run_name}.json").read_text())
    assert record["resolved"] == {"amp": "none"} and record["config"]["amp"] == "auto"
    plain = make_cfg(tmp_path, seed=1)  # nothing chosen: no extra line, the setting recorded as run
    log_some(plain)
    assert f"{plain.run_name}: on" not in capsys.readouterr().out
    assert json.loads((plain.run_dir / f"{plain.run_name}.json").read_text())["resolved"] == {"amp": "none"}
