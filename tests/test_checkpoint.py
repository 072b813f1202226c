"""Checkpoints (issue 13.3, 13.6): loaded with weights_only=True, verified by their digest before use;
a damaged checkpoint or one holding a pickled object is refused with one line naming the file."""

import hashlib
import io
import json
import pickle
import random
import re
import zipfile

import numpy as np
import pytest
import torch

from experiments.core import checkpoint
from experiments.core.checkpoint import CheckpointError, checkpoint_path
from experiments.core.runner import run
from tests.helpers import MULTIRATE, Blobs, make_cfg


def interrupted(tmp_path, **kw):
    cfg = make_cfg(tmp_path, **kw)
    assert run(cfg, Blobs(), stop_at_step=11)["status"] == "interrupted"
    return cfg, checkpoint_path(cfg)


def test_the_checkpoint_is_plain_tensors_and_values(tmp_path):
    _, path = interrupted(tmp_path, **MULTIRATE)
    state = torch.load(path, weights_only=True)  # no pickled object anywhere
    assert state["progress"]["epoch"] == 1 and state["progress"]["batch"] == 3
    assert re.fullmatch(r"[0-9a-f]{64}", state.pop("digest")) and checkpoint.load(path).keys() == state.keys()


def test_rng_states_round_trip_exactly():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state
    saved = checkpoint.rng_states()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    expected = random.random(), np.random.standard_normal(3), torch.rand(3)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    checkpoint.set_rng_states(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    got = random.random(), np.random.standard_normal(3), torch.rand(3)
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1]) and torch.equal(got[2], expected[2])


def flip_byte_in_tensor(path, tensor):
    """Flip one byte inside the stored bytes of `tensor` (the file stays a valid zip)."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated", "empty", "not-a-zip"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damage):
    cfg, path = interrupted(tmp_path, **MULTIRATE)
    if damage == "flipped-byte":  # torch.load alone would load this silently
        flip_byte_in_tensor(path, torch.load(path, weights_only=True)["model"]["body.0.weight"])
        zipfile.ZipFile(path).namelist()  # still a readable archive
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\xff\xfe not a checkpoint")
    task = Blobs()
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as err:
        run(cfg, task)
    message = str(err.value)
    assert "\n" not in message and f"delete {path}" in message
    assert ("does not match its digest" in message) == (damage == "flipped-byte")
    assert task.loss_calls == 0  # nothing trained from it
    path.unlink()  # the fix it names: the run starts again from its first epoch
    assert run(cfg, Blobs())["status"] == "complete"


class Payload:
    """Stands for any object: unpickling it would run its __reduce__ (here: create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    cfg, path = interrupted(tmp_path)
    marker = tmp_path / "code-ran"
    state = torch.load(path, weights_only=True)
    state["rows"] = Payload(marker)
    with open(path, "wb") as f:  # what someone with write access to the results folder could do
        torch.save(state, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*cannot be read safely"):
        run(cfg, Blobs())
    assert not marker.exists()


def test_a_checkpoint_without_digest_is_refused(tmp_path):
    cfg, path = interrupted(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["digest"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="no digest"):
        run(cfg, Blobs())


def test_a_finished_run_records_its_checkpoint_sha256(tmp_path):
    cfg = make_cfg(tmp_path, epochs=2)
    assert run(cfg, Blobs())["status"] == "complete"
    record = json.loads((cfg.run_dir / f"{cfg.run_name}.json").read_text())
    assert record["checkpoint_sha256"] == hashlib.sha256(checkpoint_path(cfg).read_bytes()).hexdigest()
    csv_bytes = (cfg.run_dir / f"{cfg.run_name}.csv").read_bytes()
    assert record["csv_sha256"] == hashlib.sha256(csv_bytes).hexdigest()
    assert record["csv_rows"] == len(csv_bytes.splitlines()) - 1 == 2 * 3
