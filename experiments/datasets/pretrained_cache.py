"""The cache of pretrained networks, verified, and the networks shipped with the repository.

A pretrained network is cached at ``results/<profile>/<experiment>/pretrained/<key>.pt`` (`cache_path`:
the key is a hash of everything that determines the weights) with its SHA-256 beside it in
``<key>.pt.sha256`` (the format of ``sha256sum``, so ``sha256sum -c`` checks it too). `cached` reads
a cache only if its bytes have that digest; a cache that is truncated, has flipped bits, cannot be
read or has no recorded digest is reported in one line naming the file and built again, never used.

Built how: from ``experiments/pretrained/`` when the key is shipped there (the quick profile's small
ResNet and tiny DistilBERT; `SHIPPED_MANIFEST` lists each file, its SHA-256 and size), verified
against the manifest, else by pretraining. ``make pretrain`` (`main`) pretrains the shipped networks
again and says whether their weights are the shipped ones to the bit.

Downloaded networks (the paper profile's ImageNet ResNets, from torchvision) are checked too:
`check_hub_weights` compares a torch.hub file's SHA-256 with the prefix its name carries
(``resnet50-11ad3fa6.pth``) before it is loaded. torch.hub checks that prefix only when it downloads
the file (``load_state_dict_from_url`` with ``check_hash``: a file already in the cache is loaded
unchecked), so a file damaged later would be loaded without a word.

This module is apart from `experiments.datasets.pretraining` on purpose: the cache keys hash the source of
``pretraining.py`` (the code that produces the weights), and how a cache is stored and checked does
not change the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from experiments.core import determinism, registry
from experiments.core.config import experiment_config, list_methods, load_config
from experiments.core.errors import UserError
from experiments.core.files import atomic_open, sha256_bytes, sha256_file, waiting_lock, write_json

SHIPPED_DIR = Path(__file__).parents[1] / "pretrained"
SHIPPED_MANIFEST = SHIPPED_DIR / "manifest.json"
SHIPPED_MAX_BYTES = 4 << 20  # a shipped network stays small: the repository is cloned whole

_use_shipped = True  # `pretraining_forced` turns it off (make pretrain)


def cache_path(run_dir: str | Path, spec: dict, prefix: str = "", digits: int = 16) -> Path:
    """``<run_dir>/pretrained/<prefix><first digits of the sha256 of spec as sorted JSON>.pt``"""
    blob = json.dumps(spec, sort_keys=True).encode()
    return Path(run_dir) / "pretrained" / f"{prefix}{hashlib.sha256(blob).hexdigest()[:digits]}.pt"


def digest_path(path: Path) -> Path:
    """``<name>.pt.sha256`` beside a cached network: its SHA-256, written with it."""
    return path.with_name(path.name + ".sha256")


def cached(path: str | Path, pretrain: Callable[[], dict], log=None) -> dict:
    """The dict cached at `path`, verified against its recorded SHA-256; if there is none (or it is
    damaged: reported in one line), the shipped network of that key, verified, else `pretrain()`'s;
    either is saved there first, atomically, with its digest.

    Building holds a lock beside the file, so processes that need the same network at once
    (`make fig-transfer`'s two, a Slurm array's tasks) build it once: the others wait, then read it.
    """
    path = Path(path)
    log = log or _stderr
    result, _ = _read_verified(path)
    if result is not None:
        return result
    with waiting_lock(path.with_name(path.name + ".lock")):
        result, problem = _read_verified(path)  # built while this process waited, or damaged
        if result is not None:
            return result
        if problem != "missing":
            log(f"{path}: {problem}; not used, building it again")
        data = _shipped_bytes(path.name, log) if _use_shipped else None
        if data is not None:
            result = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            log(f"{path}: copied from the shipped {SHIPPED_DIR.name}/{path.name} (SHA-256 verified)")
        else:
            result = pretrain()
            buffer = io.BytesIO()
            torch.save(result, buffer)
            data = buffer.getvalue()
        write_cache(path, data)
        return result


def write_cache(path: Path, data: bytes) -> None:
    """Write a cached network's bytes and its digest file, each atomically (the network first: a
    crash between the two leaves a network whose digest does not match, which is built again)."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    with atomic_open(digest_path(path)) as f:
        f.write(f"{sha256_bytes(data)}  {path.name}\n")


def recorded_digest(path: Path) -> str | None:
    """The SHA-256 recorded for a cached network, or None if there is no readable record."""
    try:
        text = digest_path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split(maxsplit=1)[0] if text.strip() else ""
    return digest if len(digest) == 64 else None


def _read_verified(path: Path) -> tuple[dict | None, str]:
    """(the cached dict, "") if `path`'s bytes have their recorded SHA-256 and load, else (None, what
    is wrong: "missing", or a description for the message)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    expected = recorded_digest(path)
    if expected is None:
        return None, f"has no recorded SHA-256 ({digest_path(path).name} missing or unreadable)"
    if sha256_bytes(data) != expected:
        return None, (f"is damaged: its SHA-256 is not the one recorded in {digest_path(path).name} "
                      f"({len(data)} bytes)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), ""
    except Exception as err:  # noqa: BLE001 (any failure to read means: not usable)
        return None, f"cannot be loaded ({' '.join(str(err).split())[:120]})"


def check_hub_weights(path: str | Path) -> None:
    """Refuse, in one line naming the file and the fix, a downloaded torch.hub weights file whose
    SHA-256 does not start with the hex digits in its name (torch.hub's convention, its
    ``HASH_REGEX``: ``resnet50-11ad3fa6.pth``). A missing file (downloaded, and checked, when it is
    loaded) or a name without digits passes."""
    path = Path(path)
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None or not match[1] or not path.is_file():
        return
    if not sha256_file(path).startswith(match[1]):
        raise UserError(f"{path} is damaged: its SHA-256 does not start with the {match[1]} in its name; "
                        "delete it, and it is downloaded again on the next run")


def _manifest() -> dict:
    """The shipped networks' manifest (empty if there is none)."""
    try:
        return json.loads(SHIPPED_MANIFEST.read_text())
    except FileNotFoundError:
        return {}


def shipped() -> dict[str, dict]:
    """The shipped networks' manifest entries by file name (empty if there is no manifest)."""
    return {entry["file"]: entry for entry in _manifest().get("files", [])}


def built_on_vendor() -> str | None:
    """The CPU vendor the shipped networks were built on (`determinism.cpu_vendor`), if recorded."""
    return _manifest().get("cpu_vendor")


def _shipped_bytes(name: str, log) -> bytes | None:
    """The bytes of the shipped network `name` if there is one and it has its manifest's SHA-256
    (a damaged one is reported and left unused)."""
    entry = shipped().get(name)
    if entry is None:
        return None
    file = SHIPPED_DIR / name
    try:
        data = file.read_bytes()
    except OSError as err:
        log(f"{file}: cannot be read ({err.strerror}); pretraining instead")
        return None
    if sha256_bytes(data) != entry["sha256"]:
        log(f"{file} is damaged: its SHA-256 is not the one in {SHIPPED_MANIFEST.name} "
            f"({len(data)} bytes, {entry['bytes']} shipped); pretraining instead (git checkout restores it)")
        return None
    return data


@contextlib.contextmanager
def pretraining_forced():
    """Within the block `cached` pretrains instead of using a shipped network."""
    global _use_shipped
    saved, _use_shipped = _use_shipped, False
    try:
        yield
    finally:
        _use_shipped = saved


def share_caches(run_dir: str | Path, results_dir: str | Path) -> list[Path]:
    """Copy into ``<run_dir>/pretrained/`` every verified pretrained network (with its digest) that
    another folder under `results_dir` has cached for the same profile and experiment (the last two
    parts of `run_dir`) and this one lacks; returns the copies. Building one again costs about a
    minute; a damaged one is not copied (`cached` reports it where it is used)."""
    run_dir = Path(run_dir)
    profile, experiment = run_dir.parts[-2:]
    target, copied = run_dir / "pretrained", []
    for source in sorted(Path(results_dir).glob(f"**/{profile}/{experiment}/pretrained/*.pt")):
        if source.parent.resolve() == target.resolve() or (target / source.name).exists():
            continue
        data, expected = source.read_bytes(), recorded_digest(source)
        if expected is not None and sha256_bytes(data) == expected:
            write_cache(target / source.name, data)
            copied.append(target / source.name)
    return copied


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- make pretrain

def _shipped_networks(results_dir: Path) -> list[tuple[str, Path, Callable[[], dict]]]:
    """(what, cache path, build) of each shipped network, for the quick profile's config with
    `results_dir`; `build()` pretrains it as the first run that needs it does and returns what is cached."""
    transfer, transfer_text = registry.entry_point("transfer"), registry.entry_point("transfer_text")

    def config(module):
        cls, toml = experiment_config(module)
        return load_config(cls, toml, "quick", list_methods(toml)[0], [f"results_dir={results_dir}"])

    resnet, text = config(transfer), config(transfer_text)

    def build_resnet():
        determinism.apply(resnet)  # as in the run: one thread, deterministic kernels
        transfer.pretrained_state(resnet, torch.device("cpu"))
        return _read_verified(transfer.pretrained_path(resnet))[0]

    def build_text():
        determinism.apply(text)
        return transfer_text.pretrained_source_model(text, log=_stderr)

    return [("small ResNet (experiments.transfer)", transfer.pretrained_path(resnet), build_resnet),
            ("tiny DistilBERT (experiments.transfer_text)", transfer_text.pretrain_path(text), build_text)]


def different_tensors(a: dict, b: dict) -> list[str]:
    """The names of the tensors that differ in name, dtype, shape or any bit between two state dicts."""
    def bits(t):
        return t.detach().reshape(-1).contiguous().view(torch.uint8)

    return [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or a[k].dtype != b[k].dtype
            or a[k].shape != b[k].shape or not torch.equal(bits(a[k]), bits(b[k]))]


def main(argv: list[str] | None = None) -> int:
    """``make pretrain``: pretrain each shipped network again (in a temporary folder) and say whether
    its weights are the shipped ones to the bit and its key is the shipped one; then ship it (file
    and manifest) unless --check. With --check, exit status 1 if any differs."""
    parser = argparse.ArgumentParser(prog="python -m experiments.datasets.pretrained_cache",
                                     description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="compare only; change nothing")
    args = parser.parse_args(argv)
    built_on, vendor = built_on_vendor(), determinism.cpu_vendor()
    if not args.check and built_on and built_on != vendor:
        raise UserError(f"{SHIPPED_MANIFEST}: the shipped networks were built on {built_on} CPUs and this "
                        f"one is {vendor}'s, where MKL rounds differently "
                        f"(docs/determinism.md#intel-and-amd):"
                        f" rebuilt here they would not be the reference's; compare only with `make pretrain "
                        f"CHECK=1`")
    old_entries, new_entries, differs = shipped(), [], False
    with tempfile.TemporaryDirectory() as tmp, pretraining_forced():
        for what, path, build in _shipped_networks(Path(tmp)):
            result = build()
            data = path.read_bytes()
            old = next((e for e in old_entries.values() if e["what"] == what), None)
            if old is None or not (SHIPPED_DIR / old["file"]).exists():
                changed, verdict = ["(none)"], "none shipped before"
            else:
                old_state = torch.load(SHIPPED_DIR / old["file"], map_location="cpu", weights_only=True)
                changed = different_tensors(old_state["state_dict"], result["state_dict"])
                verdict = ("weights bit-identical to the shipped ones" if not changed else
                           f"weights DIFFER from the shipped ones in {len(changed)} tensors: {changed[:3]}")
            same_key = old is not None and old["file"] == path.name
            key = "" if same_key or old is None else f"; key changed from {old['file']}"
            print(f"{what}: {path.name}: {verdict}{key}", flush=True)
            differs |= bool(changed) or not same_key
            if not changed and same_key:  # keep the shipped bytes (a rebuilt file records its time)
                data = (SHIPPED_DIR / old["file"]).read_bytes()
            if len(data) > SHIPPED_MAX_BYTES:
                raise SystemExit(f"{path.name}: {len(data)} bytes, over the {SHIPPED_MAX_BYTES} shipped")
            new_entries.append(dict(file=path.name, what=what, sha256=sha256_bytes(data), bytes=len(data)))
            if not args.check:
                with atomic_open(SHIPPED_DIR / path.name, "wb") as f:
                    f.write(data)
    if not args.check:
        for name in set(old_entries) - {e["file"] for e in new_entries}:
            (SHIPPED_DIR / name).unlink(missing_ok=True)
        write_json(SHIPPED_MANIFEST, {"about": "the quick profile's pretrained networks, used when a run "
                                      "needs their key (experiments/datasets/pretrained_cache.py); rebuilt "
                                      "and compared by `make pretrain` on a CPU of the vendor they were "
                                      "built on", "cpu_vendor": vendor, "files": new_entries})
        print(f"wrote {SHIPPED_MANIFEST}", flush=True)
    return 1 if args.check and differs else 0


if __name__ == "__main__":
    # The imported module, not this __main__ copy: `cached` (called by the experiments) reads the
    # imported module's switch, which `pretraining_forced` must turn off.
    from experiments.core import errors
    from experiments.datasets import pretrained_cache

    errors.cli(pretrained_cache.main)
