"""Safe files: stale temp files of killed writers are removed (only those), and the run lock is
exclusive and released by the kernel when its holder dies (issue 13.1, 13.7)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from experiments.core import files
from experiments.core.files import LockedError, atomic_open, run_lock


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def tmp_file(folder, name, host, pid, age_s):
    """A writer's temp file for `name`, as `atomic_open` names it, last written `age_s` ago."""
    path = folder / f".{name}.{host}.{pid}.0123abcd.tmp" if host else folder / f".{name}.{pid}.0123abcd.tmp"
    path.write_text("half a row")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_the_next_write_removes_only_stale_temp_files(tmp_path):
    old = files.STALE_TMP_S + 60
    killed = tmp_file(tmp_path, "a.csv", files.HOST, dead_pid(), age_s=600)  # SIGKILLed writer, this host
    live = tmp_file(tmp_path, "b.csv", files.HOST, os.getppid(), age_s=600)  # its writer still runs
    fresh = tmp_file(tmp_path, "c.csv", files.HOST, dead_pid(), age_s=1)  # too young to be sure
    remote = tmp_file(tmp_path, "d.csv", "otherhost", 1, age_s=600)  # another host: cannot be asked
    remote_old = tmp_file(tmp_path, "e.json", "otherhost", 1, age_s=old)  # ... unless this old
    legacy = tmp_file(tmp_path, "f.csv", None, 4242, age_s=old)  # the name before hosts were recorded
    unrelated = tmp_path / ".notes.tmp"
    unrelated.write_text("")
    os.utime(unrelated, (0, 0))

    with atomic_open(tmp_path / "result.csv") as f:
        f.write("ok")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"result.csv", live.name, fresh.name, remote.name, unrelated.name}
    assert not killed.exists() and not remote_old.exists() and not legacy.exists()


def test_the_run_lock_is_exclusive(tmp_path):
    lock = tmp_path / "run.lock"
    with run_lock(lock, "results/run.json"):
        with pytest.raises(LockedError, match=rf"results/run.json is being trained by pid {os.getpid()}"):
            with run_lock(lock, "results/run.json"):
                pass
    with run_lock(lock, "results/run.json"):  # released on exit
        pass


def test_the_kernel_releases_the_lock_of_a_killed_process(tmp_path):
    lock = tmp_path / "run.lock"
    code = (f"import time\nfrom experiments.core.files import run_lock\nwith run_lock({str(lock)!r}, 'x'):\n"
            "    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError):
            with run_lock(lock, "x"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(lock, "x"):  # SIGKILL left no lock behind
        pass
