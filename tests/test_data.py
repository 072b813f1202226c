"""Data loading: readers on miniature files in the real formats, and download() offline.

Nothing here touches the internet: downloads come from file:// URLs or from a server on 127.0.0.1.
"""

import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import sys
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import torch

from experiments.datasets import data
from experiments.datasets.data import (
    ChecksumError,
    DownloadError,
    batchify,
    download,
    fetch_cifar,
    fetch_mnist,
    fetch_ptb,
    fetch_sst2,
    lm_windows,
    load_cifar,
    load_mnist,
    load_ptb,
    load_sst2_tsv,
    lock_path,
    normalize,
    read_idx,
)


@pytest.fixture(autouse=True)
def _local_only(monkeypatch, tmp_path):
    # A proxy set in the environment must not intercept the 127.0.0.1 test servers.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("MULTIRATE_DATA", str(tmp_path / "default-root"))


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def leftovers(folder):
    """Temporary files or folders a download or extraction left behind."""
    return [p.name for p in folder.rglob("*") if p.name.endswith(".part")]


# ----------------------------------------------------------------------------- CIFAR

class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` (opcode BINSTRING), as cPickle wrote the CIFAR files."""

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def write_py2_pickle(path, obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # The originals name numpy's pre-2.0 module; numpy 2 still unpickles it.
    path.write_bytes(buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def make_cifar10(root, n=3, seed=0):
    """root/cifar-10-batches-py with five tiny training batches and a test batch; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"]):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [(i + j) % 10 for j in range(n)]  # a list of ints, as in the originals
        write_py2_pickle(folder / name, {b"batch_label": f"batch {i}".encode(), b"labels": y, b"data": x,
                                         b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]})
        written[name] = (x, y)
    (folder / "batches.meta").write_bytes(b"")  # present in the original folder, unused
    return written


def make_cifar100(root, n=4, seed=1):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name in ("train", "test"):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n).tolist(), rng.integers(0, 20, n).tolist()
        write_py2_pickle(folder / name, {b"filenames": [b"f.png"] * n, b"batch_label": b"x",
                                         b"fine_labels": fine, b"coarse_labels": coarse, b"data": x})
        written[name] = (x, fine)
    return written


def tar_gz(src_root, folder, archive):
    with tarfile.open(archive, "w:gz") as t:
        t.add(src_root / folder, arcname=folder)
    return archive


def test_cifar_pickles_are_python2_style(tmp_path):
    make_cifar10(tmp_path)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}") and b"U\x04data" in raw and b"cnumpy.core.multiarray\n" in raw


def test_load_cifar10_gives_the_written_values(tmp_path):
    written = make_cifar10(tmp_path)
    images, labels = load_cifar(tmp_path, "cifar10", train=True)
    assert images.dtype == torch.uint8 and images.shape == (15, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.shape == (15,)
    x = np.concatenate([written[f"data_batch_{j}"][0] for j in range(1, 6)])  # batches 1..5 in order
    y = sum((written[f"data_batch_{j}"][1] for j in range(1, 6)), [])
    assert labels.tolist() == y
    # A row is 1024 red values, then green, then blue, each plane row-major.
    assert images[4, 2, 5, 7] == x[4, 2 * 1024 + 5 * 32 + 7]
    assert np.array_equal(images.numpy().reshape(15, -1), x)

    images, labels = load_cifar(tmp_path, "cifar10", train=False)
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == written["test_batch"][1]
    assert np.array_equal(images.reshape(3, -1).numpy(), written["test_batch"][0])


def test_load_cifar100_uses_fine_labels(tmp_path):
    written = make_cifar100(tmp_path)
    for train, name in ((True, "train"), (False, "test")):
        images, labels = load_cifar(tmp_path, "cifar100", train=train)
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
        assert labels.dtype == torch.int64 and labels.tolist() == written[name][1]
        assert np.array_equal(images.reshape(4, -1).numpy(), written[name][0])


def test_load_cifar_missing_or_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_cifar"):
        load_cifar(tmp_path, "cifar10")
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar(tmp_path, "cifar1000")


def test_fetch_cifar_downloads_verifies_and_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    written = make_cifar10(src)
    archive = tar_gz(src, "cifar-10-batches-py", src / "cifar-10-python.tar.gz")
    monkeypatch.setattr(data, "CIFAR_URL", src.as_uri() + "/")
    monkeypatch.setitem(data.CIFAR, "cifar10", (archive.name, "cifar-10-batches-py",
                                                md5(archive.read_bytes()), *data.CIFAR["cifar10"][3:]))
    root = fetch_cifar(tmp_path / "root", "cifar10")
    assert root == tmp_path / "root" and (root / archive.name).read_bytes() == archive.read_bytes()
    images, labels = load_cifar(root, "cifar10", train=False)
    assert np.array_equal(images.reshape(3, -1).numpy(), written["test_batch"][0])
    assert leftovers(root) == []
    archive.unlink()  # offline from now on, and the archive deleted to save space:
    (root / archive.name).unlink()  # the unpacked folder suffices
    assert fetch_cifar(root, "cifar10") == root
    assert torch.equal(load_cifar(root, "cifar10", train=False)[0], images)


def test_fetch_cifar_uses_the_default_root_and_an_unpacked_folder(tmp_path):
    make_cifar10(tmp_path / "default-root")  # unpacked by hand, no archive: nothing to download
    assert fetch_cifar(name="cifar10") == tmp_path / "default-root"


def test_extraction_refuses_paths_outside_the_root(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as t:
        for name in ("pkg/ok.txt", "../outside.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            t.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "root").mkdir()
    with pytest.raises(tarfile.FilterError):
        data._extract(evil, tmp_path / "root", "pkg")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "root" / "pkg").exists()
    assert list((tmp_path / "root").iterdir()) == []  # the temporary folder is gone too


# ----------------------------------------------------------------------------- MNIST

def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim  # 0x00, 0x00, type 0x08 = ubyte, number of dimensions
    return struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def make_mnist(folder, n_train=5, n_test=3, seed=2):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
        written[prefix] = (x, y)
    return written


def test_idx_header_is_the_standard_one():
    header = idx_bytes(np.zeros((2, 28, 28), np.uint8))[:16]
    assert header == bytes.fromhex("00000803 00000002 0000001c 0000001c")
    assert int.from_bytes(header[:4], "big") == 2051
    assert int.from_bytes(idx_bytes(np.zeros(2, np.uint8))[:4], "big") == 2049


def test_load_mnist_gives_the_written_values(tmp_path):
    written = make_mnist(tmp_path)
    for train, prefix, n in ((True, "train", 5), (False, "t10k", 3)):
        images, labels = load_mnist(tmp_path, train=train)
        assert images.dtype == torch.uint8 and images.shape == (n, 1, 28, 28)
        assert labels.dtype == torch.int64 and labels.shape == (n,)
        assert np.array_equal(images[:, 0].numpy(), written[prefix][0])
        assert labels.tolist() == written[prefix][1].tolist()


def test_read_idx_rejects_bad_files(tmp_path):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    (tmp_path / "a").write_bytes(good)  # uncompressed files are read too
    assert read_idx(tmp_path / "a", 2050).tolist() == np.arange(12).reshape(3, 4).tolist()
    with pytest.raises(ValueError, match="magic number 2050, expected 2051"):
        read_idx(tmp_path / "a", 2051)
    (tmp_path / "b.gz").write_bytes(gzip.compress(good[:-1]))  # truncated
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "b.gz", 2050)


def test_fetch_mnist(tmp_path, monkeypatch):
    written = make_mnist(tmp_path / "src")
    monkeypatch.setattr(data, "MNIST_URL", (tmp_path / "src").as_uri() + "/")
    checksums = {p.name: md5(p.read_bytes()) for p in (tmp_path / "src").iterdir()}
    monkeypatch.setattr(data, "MNIST_MD5", checksums)
    folder = fetch_mnist(tmp_path / "root")
    assert folder == tmp_path / "root" / "mnist"
    images, _ = load_mnist(folder, train=False)
    assert np.array_equal(images[:, 0].numpy(), written["t10k"][0])


# ----------------------------------------------------------------------------- PTB

PTB = {
    "ptb.train.txt": " the cat sat \n a <unk> cat ran \n",
    "ptb.valid.txt": " the dog sat \n",  # "dog" is not in train
    "ptb.test.txt": " cat \n\n",  # an empty line still ends with <eos>
}


def make_ptb(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in PTB.items():
        (folder / name).write_text(text)


def test_load_ptb(tmp_path):
    make_ptb(tmp_path)
    corpus = load_ptb(tmp_path)
    assert corpus.vocab == ["the", "cat", "sat", "<eos>", "a", "<unk>", "ran"]  # first occurrence in train
    for split in (corpus.train, corpus.valid, corpus.test):
        assert split.dtype == torch.int64 and split.ndim == 1
    assert corpus.train.tolist() == [0, 1, 2, 3, 4, 5, 1, 6, 3]
    assert corpus.valid.tolist() == [0, 5, 2, 3]  # dog -> <unk>
    assert corpus.test.tolist() == [1, 3, 3]


def test_load_ptb_without_unk_refuses_unseen_words(tmp_path):
    make_ptb(tmp_path)
    (tmp_path / "ptb.train.txt").write_text("the cat sat\n")
    with pytest.raises(ValueError, match="no <unk>"):
        load_ptb(tmp_path)


def test_batchify_and_windows():
    ids = torch.arange(11)
    data_ = batchify(ids, 3)  # 11 // 3 = 3 tokens per stream, the last 2 dropped
    assert data_.shape == (3, 3) and data_.is_contiguous()
    assert data_.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # column j: tokens 3j .. 3j+2
    x, y = lm_windows(data_, 2, 0)
    assert x.tolist() == [[0, 3, 6], [1, 4, 7]] and y.tolist() == [[1, 4, 7], [2, 5, 8]]
    x, y = lm_windows(data_, 2, 1)  # the last window is shorter
    assert x.tolist() == [[1, 4, 7]] and y.tolist() == [[2, 5, 8]]
    assert [len(lm_windows(data_, 2, i)[0]) for i in range(0, len(data_) - 1, 2)] == [2]
    with pytest.raises(IndexError):
        lm_windows(data_, 2, 2)


def test_fetch_ptb_trusts_on_first_use(tmp_path, monkeypatch):
    make_ptb(tmp_path / "src")
    monkeypatch.setattr(data, "PTB_URL", (tmp_path / "src").as_uri() + "/")
    monkeypatch.setattr(data, "PTB_MD5", {})  # files without a published checksum
    folder = fetch_ptb(tmp_path / "root")
    assert folder == tmp_path / "root" / "ptb"
    assert load_ptb(folder).train.tolist() == load_ptb(tmp_path / "src").train.tolist()
    for name in PTB:
        digest = hashlib.sha256(PTB[name].encode()).hexdigest()
        assert lock_path(folder / name).read_text() == f"{digest}  {name}\n"  # sha256sum -c format
    (tmp_path / "src" / "ptb.valid.txt").write_text(" changed upstream \n")
    (folder / "ptb.valid.txt").unlink()
    with pytest.raises(ChecksumError, match="recorded in .*ptb.valid.txt.sha256"):
        fetch_ptb(tmp_path / "root")


def test_fetch_ptb_checks_the_published_md5s(tmp_path, monkeypatch):
    assert data.PTB_MD5["ptb.train.txt"] == "f26c4b92c5fdc7b3f8c7cdcb991d8420"  # as torchtext published it
    make_ptb(tmp_path / "src")
    monkeypatch.setattr(data, "PTB_URL", (tmp_path / "src").as_uri() + "/")
    monkeypatch.setattr(data, "PTB_MD5", {name: md5(text.encode()) for name, text in PTB.items()})
    folder = fetch_ptb(tmp_path / "root")
    assert load_ptb(folder).train.tolist() == load_ptb(tmp_path / "src").train.tolist()
    assert not any(lock_path(folder / name).exists() for name in PTB)  # a published MD5 needs no lock
    (tmp_path / "src" / "ptb.valid.txt").write_text(" changed upstream \n")
    (folder / "ptb.valid.txt").unlink()
    with pytest.raises(ChecksumError, match="expected " + md5(PTB["ptb.valid.txt"].encode())):
        fetch_ptb(tmp_path / "root")


# ----------------------------------------------------------------------------- SST-2

SST2 = 'sentence\tlabel\nhide new secretions from the parental units \t0\nit \'s a " charming " film \t1\n'


def test_load_sst2_tsv(tmp_path):
    (tmp_path / "train.tsv").write_text(SST2)
    sentences, labels = load_sst2_tsv(tmp_path / "train.tsv")
    assert sentences == ["hide new secretions from the parental units ", 'it \'s a " charming " film ']
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1]
    (tmp_path / "crlf.tsv").write_bytes(SST2.replace("\n", "\r\n").encode())
    assert load_sst2_tsv(tmp_path / "crlf.tsv")[0] == sentences


def test_load_sst2_tsv_rejects_other_layouts(tmp_path):
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tuneasy mishmash \n")  # GLUE's unlabelled test
    with pytest.raises(ValueError, match="header"):
        load_sst2_tsv(tmp_path / "test.tsv")
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\nno tab here\n")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        load_sst2_tsv(tmp_path / "bad.tsv")


def test_published_sst2_checksum():
    # As torchtext's SST2 loader published it for this URL (pytorch/text, torchtext/datasets/sst2.py).
    assert (data.SST2_URL, data.SST2_MD5) == ("https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
                                              "9f81648d4199384278b86e315dac217c")


def test_load_sst2_can_skip_the_hub(tmp_path, monkeypatch):
    hub_online(monkeypatch)
    sst2_zip(tmp_path, monkeypatch)
    hub = FakeDatasets()
    monkeypatch.setitem(sys.modules, "datasets", hub)
    splits = data.load_sst2(tmp_path / "root", hub=False)
    assert hub.calls == [] and splits["dev"][1].tolist() == [0, 1]


def test_fetch_sst2_unzips(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    with zipfile.ZipFile(tmp_path / "src" / "SST-2.zip", "w") as z:
        z.writestr("SST-2/train.tsv", SST2)
        z.writestr("SST-2/dev.tsv", SST2)
    monkeypatch.setattr(data, "SST2_URL", (tmp_path / "src" / "SST-2.zip").as_uri())
    monkeypatch.setattr(data, "SST2_MD5", None)  # a zip without a published checksum
    folder = fetch_sst2(tmp_path / "root")
    assert folder == tmp_path / "root" / "SST-2"
    assert load_sst2_tsv(folder / "dev.tsv")[1].tolist() == [0, 1]
    assert lock_path(tmp_path / "root" / "SST-2.zip").exists() and leftovers(tmp_path / "root") == []


def sst2_zip(tmp_path, monkeypatch):
    """A miniature GLUE SST-2.zip served from a file:// URL, with its MD5 as the published one."""
    (tmp_path / "src").mkdir(exist_ok=True)
    with zipfile.ZipFile(tmp_path / "src" / "SST-2.zip", "w") as z:
        z.writestr("SST-2/train.tsv", SST2)
        z.writestr("SST-2/dev.tsv", SST2)
    monkeypatch.setattr(data, "SST2_URL", (tmp_path / "src" / "SST-2.zip").as_uri())
    monkeypatch.setattr(data, "SST2_MD5", md5((tmp_path / "src" / "SST-2.zip").read_bytes()))


class FakeDatasets:
    """Stands in for Hugging Face `datasets` (no network): records the calls, serves two splits."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def load_dataset(self, *args):
        self.calls.append(args)
        if self.fail:
            raise ConnectionError("Couldn't reach the hub (offline mode is enabled)")
        return {"train": {"sentence": ["a fine film ", "dull "], "label": [1, 0]},
                "validation": {"sentence": ["great "], "label": [1]},
                "test": {"sentence": ["unlabelled "], "label": [-1]}}


def test_load_sst2_through_datasets(tmp_path, monkeypatch):
    hub = FakeDatasets()
    monkeypatch.setitem(sys.modules, "datasets", hub)
    splits = data.load_sst2(tmp_path / "root")
    assert hub.calls == [("nyu-mll/glue", "sst2")]
    assert splits["train"][0] == ["a fine film ", "dull "] and splits["train"][1].tolist() == [1, 0]
    assert splits["dev"][0] == ["great "] and splits["dev"][1].dtype == torch.int64
    assert set(splits) == {"train", "dev"} and not (tmp_path / "root").exists()  # no zip fetched


def hub_online(monkeypatch):
    """Both Hugging Face offline switches off (another test module sets HF_HUB_OFFLINE at import)."""
    for switch in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(switch, raising=False)


def test_load_sst2_falls_back_to_the_checksummed_zip(tmp_path, monkeypatch, capsys):
    hub_online(monkeypatch)
    sst2_zip(tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets(fail=True))
    splits = data.load_sst2(tmp_path / "root")
    assert "SST-2 from the Hugging Face hub failed (ConnectionError" in capsys.readouterr().err
    sentences, labels = load_sst2_tsv(tmp_path / "root" / "SST-2" / "dev.tsv")
    assert splits["dev"][0] == sentences and torch.equal(splits["dev"][1], labels)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: the zip, silently
    assert data.load_sst2(tmp_path / "root")["train"][0] == splits["train"][0]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("switch", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_load_sst2_offline_never_downloads(tmp_path, monkeypatch, switch):
    hub_online(monkeypatch)
    sst2_zip(tmp_path, monkeypatch)
    monkeypatch.setenv(switch, "1")
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets(fail=True))
    with pytest.raises(DownloadError, match=f"{switch}.*forbid downloading"):
        data.load_sst2(tmp_path / "root")
    assert not (tmp_path / "root").exists()
    monkeypatch.delenv(switch)
    data.load_sst2(tmp_path / "root")  # downloaded once, ...
    monkeypatch.setenv(switch, "1")
    (tmp_path / "src" / "SST-2.zip").unlink()
    assert data.load_sst2(tmp_path / "root")["dev"][1].tolist() == [0, 1]  # ... then read offline


def test_download_prints_progress_lines(tmp_path, source, monkeypatch, capsys):
    monkeypatch.setattr(data, "PROGRESS_EVERY", 0.0)
    download(source.as_uri(), tmp_path / "file.bin", md5=md5(source.read_bytes()))
    err = capsys.readouterr().err
    assert f"downloading {source.as_uri()}" in err and "  0.0 of 0.0 MiB (100 %)\n" in err
    assert data.progress(3 * 2**20, 12 * 2**20) == "3.0 of 12.0 MiB (25 %)"
    assert data.progress(2**20, None) == "1.0 MiB"


# ----------------------------------------------------------------------------- normalize

def test_normalize():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    out = normalize(images, mean, std)
    ref = (images.double() / 255 - torch.tensor(mean, dtype=torch.double).view(3, 1, 1)) / torch.tensor(
        std, dtype=torch.double).view(3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.allclose(normalize(images[0], mean, std), out[0])  # a single C x H x W image
    floats = images.float()
    normalize(floats, mean, std)
    assert torch.equal(floats, images.float())  # the input is never modified in place


# ----------------------------------------------------------------------------- download

@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src" / "file.bin"
    src.parent.mkdir()
    src.write_bytes(b"the real bytes" * 100)
    return src


def test_download_with_correct_checksum(tmp_path, source):
    raw = source.read_bytes()
    dest = tmp_path / "dl" / "sub" / "file.bin"  # missing folders are created
    assert download(source.as_uri(), dest, md5=md5(raw).upper()) == dest
    assert dest.read_bytes() == raw
    dest2 = tmp_path / "dl" / "file2.bin"
    assert download(source.as_uri(), dest2, sha256=hashlib.sha256(raw).hexdigest()) == dest2
    assert leftovers(tmp_path / "dl") == [] and not lock_path(dest).exists()
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, shareable
    source.unlink()  # a verified file is not fetched again: this works offline
    assert download(source.as_uri(), dest, md5=md5(raw)) == dest


def test_download_replaces_a_corrupt_file(tmp_path, source, capsys):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"the real bytes" * 50)  # partial
    download(source.as_uri(), dest, md5=md5(source.read_bytes()))
    assert dest.read_bytes() == source.read_bytes()
    assert "wrong md5" in capsys.readouterr().err


def test_download_with_wrong_checksum_raises_and_leaves_nothing(tmp_path, source):
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumError) as err:
        download(source.as_uri(), dest, md5="0" * 32)
    assert source.as_uri() in str(err.value) and "0" * 32 in str(err.value)
    assert list(tmp_path.glob("file.bin*")) == [] and leftovers(tmp_path) == []
    with pytest.raises(ValueError):
        download(source.as_uri(), dest, md5="0" * 32, sha256="0" * 64)


def test_download_unreachable_raises_a_readable_error(tmp_path):
    url = "http://127.0.0.1:9/data.tar.gz"  # the discard port, closed: connection refused
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "data.tar.gz", md5="0" * 32, timeout=2)
    message = str(err.value)
    assert url in message and str(tmp_path / "data.tar.gz") in message and "place it at" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # `raise ... from None`
    assert isinstance(err.value, RuntimeError) and not isinstance(err.value, ChecksumError)
    assert list(tmp_path.iterdir()) == []


def test_download_of_a_missing_source_raises_download_error(tmp_path):
    with pytest.raises(DownloadError, match="No such file"):
        download((tmp_path / "missing").as_uri(), tmp_path / "dest")
    assert list(tmp_path.iterdir()) == []


def test_download_timeout_raises_download_error(tmp_path):
    with socket.socket() as server:  # accepts connections (in the backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/x"
        with pytest.raises(DownloadError, match="timed out"):
            download(url, tmp_path / "x", timeout=0.2)
    assert list(tmp_path.iterdir()) == []


class Server:
    """Serves `bodies` in turn on 127.0.0.1, declaring `length` (or the true length) as Content-Length."""

    def __init__(self, bodies, length=None):
        self.bodies, self.requests = list(bodies), 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = outer.bodies[min(outer.requests, len(outer.bodies) - 1)]
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(length or len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_retries_a_bad_transfer_once(tmp_path):
    good = b"good bytes"
    with Server([b"bad bytes!", good]) as server:
        download(server.url, tmp_path / "f", md5=md5(good))
        assert server.requests == 2 and (tmp_path / "f").read_bytes() == good
    with Server([b"bad bytes!"]) as server:
        with pytest.raises(ChecksumError):
            download(server.url, tmp_path / "g", md5=md5(good))
        assert server.requests == 2  # one retry, then the error
    assert leftovers(tmp_path) == [] and not (tmp_path / "g").exists()


def test_download_never_trusts_a_truncated_transfer(tmp_path):
    with Server([b"only part"], length=100) as server:
        with pytest.raises(DownloadError, match="incomplete: got 9 of 100 bytes"):
            download(server.url, tmp_path / "f")  # no checksum: trust on first use
        assert server.requests == 2
    assert list(tmp_path.iterdir()) == []  # neither the file nor a lock


def test_trust_on_first_use(tmp_path, source):
    dest, lock = tmp_path / "file.bin", lock_path(tmp_path / "file.bin")
    download(source.as_uri(), dest)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert lock.read_text() == f"{digest}  file.bin\n" and leftovers(tmp_path) == []

    dest.write_bytes(b"tampered")  # a damaged local copy is caught and fetched again
    download(source.as_uri(), dest)
    assert dest.read_bytes() == source.read_bytes() and lock.read_text().split()[0] == digest

    source.write_bytes(b"changed upstream")  # a changed source is refused, the good copy kept
    download(source.as_uri(), dest)
    assert dest.read_bytes() != b"changed upstream"
    dest.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match=f"recorded in {lock} on first use.*delete {lock}"):
        download(source.as_uri(), dest)
    assert not dest.exists() and lock.read_text().split()[0] == digest

    lock.unlink()  # deleting the lock trusts the new file
    download(source.as_uri(), dest)
    assert dest.read_bytes() == b"changed upstream"
    assert lock.read_text().split()[0] == hashlib.sha256(b"changed upstream").hexdigest()


def test_trust_on_first_use_of_a_file_placed_by_hand(tmp_path):
    dest = tmp_path / "ptb.train.txt"
    dest.write_text("placed by hand\n")
    download("http://127.0.0.1:9/never-contacted", dest)  # no network needed
    assert lock_path(dest).read_text().split()[0] == hashlib.sha256(b"placed by hand\n").hexdigest()


def test_data_root(tmp_path, monkeypatch):
    assert data.data_root() == tmp_path / "default-root"
    monkeypatch.delenv("MULTIRATE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.data_root() == tmp_path / "home" / ".cache" / "multirate-data"


# ----------------------------------------------------------------------------- generated data sets

def test_generated_once_makes_each_data_set_once_and_hands_out_copies():
    calls = []

    @data.generated_once
    def make(n: int, seed: int):
        calls.append((n, seed))
        g = torch.Generator().manual_seed(seed)
        return {"train": (torch.rand(n, generator=g), [torch.arange(n)]), "name": "toy"}

    first = make(4, 0)
    first["train"][0].add_(1)  # a caller changing its tensors in place ...
    first["train"][1][0].zero_()
    second = make(4, 0)  # ... does not change what the next caller gets
    assert calls == [(4, 0)]
    assert torch.equal(second["train"][0], torch.rand(4, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(second["train"][1][0], torch.arange(4)) and second["name"] == "toy"
    make(4, 1)
    assert calls == [(4, 0), (4, 1)]


def test_the_generated_target_tasks_are_made_once_a_process():
    from experiments.datasets import synthetic_images, synthetic_text

    images, text = synthetic_images.target_task, synthetic_text.target_task
    for make, args in ((images, (20, 3)), (text, (8, 4, 1, 16))):
        make.cache_clear()
        first, again = make(*args), make(*args)
        assert (make.cache_info().misses, make.cache_info().hits) == (1, 1)
        tensors = [list(v) for v in (first, again)] if make is images else [
            [t for split in v.values() for t in split] for v in (first, again)]
        assert all(torch.equal(a, b) and a is not b for a, b in zip(*tensors))
