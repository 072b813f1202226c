"""A run's checkpoint: everything `runner.run` needs to continue to the same bits, in one file.

The file is an ordinary ``torch.save`` dict of tensors and plain Python values (RNG states as
tensors and lists, counters as ints), so it loads with ``torch.load(..., weights_only=True)``: no
pickled object, and so no code, can come in through a checkpoint. Its "digest" entry is the
SHA-256 of the rest of its content (every tensor's dtype, shape and bytes, every plain value, in
order); `load` recomputes it, so a byte flipped anywhere in a tensor is refused, not resumed from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from experiments.core.config import RunConfig
from experiments.core.errors import UserError
from experiments.core.files import atomic_open, sha256_bytes


@dataclasses.dataclass
class Progress:
    """Where training stands; everything here goes into the checkpoint."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # completed minibatches of the current epoch
    perm: Tensor | None = None  # the current epoch's data order
    time_s: float = 0.0  # training wall-clock, without evaluation and checkpointing
    loss_sum: Tensor | None = None  # over the current epoch's minibatches, kept on the device
    loss_count: int = 0


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted; the message names the file and the fix."""


def checkpoint_path(cfg: RunConfig) -> Path:
    """results/<profile>/<experiment>/checkpoints/<run_name>.pt"""
    return cfg.run_dir / "checkpoints" / f"{cfg.run_name}.pt"


def rng_states() -> dict:
    """The global RNG states of torch, NumPy and Python as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return dict(torch=torch.get_rng_state(),
                numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), gauss=float(gauss)),
                python=dict(version=version, internal=list(internal), gauss_next=gauss_next),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_states(states: dict) -> None:
    """Inverse of `rng_states`."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def digest(value) -> str:
    """SHA-256 of a nested structure of dicts, lists, tuples, tensors and plain values."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h, value) -> None:
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, list | tuple):
        h.update(f"{type(value).__name__[0]}{len(value)}".encode())
        for item in value:
            _feed(h, item)
    elif isinstance(value, float):
        h.update(b"f" + struct.pack("<d", value))
    elif value is None or isinstance(value, bool | int | str):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"checkpoint value of type {type(value).__name__} cannot be saved with weights_only")


def save(path: Path, state: dict) -> str:
    """Write `state` (plus its digest) atomically to `path`; returns the file's SHA-256."""
    buffer = io.BytesIO()
    torch.save({**state, "digest": digest(state)}, buffer)
    data = buffer.getvalue()
    with atomic_open(path, "wb") as f:
        f.write(data)
    return sha256_bytes(data)


def load(path: Path) -> dict:
    """Read a checkpoint written by `save` with weights_only=True and check its digest.

    Raises CheckpointError naming the file and the fix if it is damaged or holds anything but
    tensors and plain values.
    """
    fix = f"delete {path} to start the run again from its first epoch (or restore the file)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's messages (zip directory, EOF, unpickler) name neither file nor fix
        first = " ".join(str(err).split())[:160]
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely ({type(err).__name__}: {first}); {fix}") from err
    if not isinstance(state, dict) or "digest" not in state:
        raise CheckpointError(f"checkpoint {path} was not written by this code (no digest); {fix}")
    recorded = state.pop("digest")
    if digest(state) != recorded:
        raise CheckpointError(f"checkpoint {path} is damaged (its content does not match its digest); {fix}")
    return state


def capture(cfg: RunConfig, model, optimizer, scheduler, data_gen: torch.Generator, aug_gen: torch.Generator,
            prog: Progress, log, scaler=None) -> dict:
    """Everything `runner.run` needs to continue a run: weights, optimizer and scheduler state, the
    fp16 loss scaler's state (its scale and growth counter decide which steps it skips), the run's
    two generators and the global RNGs, the progress counters and what `log` has logged."""
    return dict(
        model=model.state_dict(), optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        scaler=scaler.state_dict() if scaler is not None else None,
        data_gen=data_gen.get_state(), aug_gen=aug_gen.get_state(), rng=rng_states(),
        progress={**dataclasses.asdict(prog), "loss_sum": prog.loss_sum.cpu()},
        rows=log.rows, started=log.started, wandb_id=log.wandb_id, config=dataclasses.asdict(cfg),
    )


def restore(state: dict, model, optimizer, scheduler, data_gen: torch.Generator, aug_gen: torch.Generator,
            device: torch.device, scaler=None) -> Progress:
    """Put a `capture`d state back; returns the run's Progress (the log's part is `state["rows"]` etc.)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):  # none in a checkpoint from before fp16 was kept
        scaler.load_state_dict(state["scaler"])
    data_gen.set_state(state["data_gen"])
    aug_gen.set_state(state["aug_gen"])
    set_rng_states(state["rng"])
    return Progress(**{**state["progress"], "loss_sum": state["progress"]["loss_sum"].to(device)})
