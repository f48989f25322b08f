"""Data sets that cannot train what they seem to, that changed under a preempted run, or that
carry a crafted pickle: each is refused in one line (exit code 2) before anything is written.

The training runs use a small image folder (2 classes, 3 batches of 4 per epoch at 32 px) so
that a resume on changed data takes seconds even on a busy two-core machine."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from adautomix_fast.data import arrays, build_loaders
from adautomix_fast.errors import DataError

from cli_helpers import run_cli, single_error_line

TRAIN = ["--arch", "tiny", "-j", "0", "--vis-every", "0", "--img-size", "32", "--batch-size", "4",
         "--log-interval", "1"]


def _jpeg(path, seed, size=(20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def make_folder(root, classes=("ant", "bee"), per_class=6, val_per_class=1):
    for c, name in enumerate(classes):
        for i in range(per_class):
            _jpeg(root / "train" / name / f"{i}.jpg", 100 * c + i)
        for i in range(val_per_class):
            _jpeg(root / "val" / name / f"v{i}.jpg", 1000 + 100 * c + i)
    return root


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes: what a refused command must leave as it was."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


# ---------------------------------------------------------------------------- fewer than two classes
def test_a_single_class_folder_is_refused_naming_it_and_nothing_is_written(tmp_path, capsys):
    data = make_folder(tmp_path / "data", classes=("only",))
    runs = tmp_path / "runs"
    code, _, err = run_cli(TRAIN + ["--dataset", "folder", "--data-dir", str(data), "--epochs", "1",
                                    "--output", str(runs)], capsys)
    line = single_error_line(err)
    assert code == 2, err
    assert str(data / "train") in line and "one class folder (only)" in line and "at least two" in line
    assert not runs.exists()


def _cub(root, labels):
    root.mkdir(parents=True)
    ids = range(1, len(labels) + 1)
    (root / "images.txt").write_text("".join(f"{i} c/{i}.jpg\n" for i in ids))
    (root / "train_test_split.txt").write_text("".join(f"{i} {int(i % 3 != 0)}\n" for i in ids))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {label}\n" for i, label in zip(ids, labels)))
    for i in ids:
        _jpeg(root / "images" / "c" / f"{i}.jpg", i)
    return root


def test_a_reader_that_yields_one_training_class_is_refused(tmp_path):
    """Not only class folders: a CUB label file naming one class, or a CIFAR file whose training
    labels are all alike, trains a classifier of one class too."""
    cub = _cub(tmp_path / "CUB_200_2011", [2] * 6)
    with pytest.raises(DataError) as exc:
        build_loaders("cub200", str(cub), 2, workers=0)
    assert str(cub) in str(exc.value) and "one class (2)" in str(exc.value) and "\n" not in str(exc.value)

    cifar = write_cifar10(tmp_path / "cifar-10-batches-py", pickle.dumps, labels=lambda n, rng: [3] * n)
    with pytest.raises(DataError) as exc:
        build_loaders("cifar10", str(cifar), 2, workers=0)
    assert str(cifar) in str(exc.value) and "one class (c3)" in str(exc.value)

    # Two classes are enough.
    _, _, info = build_loaders("cub200", str(_cub(tmp_path / "two" / "CUB_200_2011", [1, 2] * 3)), 2, workers=0)
    assert info.num_classes == 2


# ---------------------------------------------------------------------------- a changed data set
def _train_one_epoch(tmp_path, capsys, data, *extra):
    runs = tmp_path / "runs"
    code, _, err = run_cli(TRAIN + ["--dataset", "folder", "--data-dir", str(data), "--epochs", "2",
                                    "--stop-after", "1", "--output", str(runs), "--run-name", "run", *extra], capsys)
    assert code == 0, err
    return runs / "run"


def _resume(run, data, capsys, *extra):
    return run_cli(["--resume", str(run), "--data-dir", str(data), "--vis-every", "0", "-j", "0", *extra], capsys)


def _set_position(run, batch_in_epoch, drop_fingerprint=False):
    """Turn checkpoint-last.pt into what a preemption after ``batch_in_epoch`` batches of the
    next epoch writes (and, with ``drop_fingerprint``, into a checkpoint of an older engine)."""
    path = run / "checkpoint-last.pt"
    state = torch.load(path, weights_only=True)
    state["batch_in_epoch"] = batch_in_epoch
    if drop_fingerprint:
        state.pop("train_size", None)
        state.pop("train_fingerprint", None)
    torch.save(state, path)


def test_a_checkpoint_records_the_training_sets_size_and_fingerprint(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    run = _train_one_epoch(tmp_path, capsys, data)
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    _, _, info = build_loaders("folder", str(data), 4, workers=0, image_size=32)
    assert state["train_size"] == 12 and state["train_fingerprint"] == info.train_fingerprint


def test_a_resume_on_changed_data_is_refused_and_allowed_with_the_flag(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    run = _train_one_epoch(tmp_path, capsys, data)
    _jpeg(data / "train" / "bee" / "new.jpg", 7)   # one more image: same batches per epoch
    before = snapshot(run)
    code, _, err = _resume(run, data, capsys)
    line = single_error_line(err)
    assert code == 2, err
    assert str(run / "checkpoint-last.pt") in line and "12 training images" in line and "now holds 13" in line
    assert "--allow-data-change" in line
    assert snapshot(run) == before

    code, _, err = _resume(run, data, capsys, "--allow-data-change")
    assert code == 0, err
    assert "note: it was trained on 12 training images, the data set now holds 13" in err


def test_a_replaced_image_of_the_same_name_changes_the_fingerprint(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    run = _train_one_epoch(tmp_path, capsys, data)
    _jpeg(data / "train" / "ant" / "0.jpg", 99, size=(24, 24))   # same path, other file
    code, _, err = _resume(run, data, capsys)
    assert code == 2 and "fingerprint" in single_error_line(err) and "--allow-data-change" in err


def test_a_mid_epoch_batch_the_changed_data_no_longer_reaches_is_one_line_not_a_traceback(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    run = _train_one_epoch(tmp_path, capsys, data)
    _set_position(run, 2)   # preempted after batch 2 of the 3 of epoch 2
    for c in ("ant", "bee"):   # 6 images left: 1 batch per epoch
        for i in range(3, 6):
            os.unlink(data / "train" / c / f"{i}.jpg")
    before = snapshot(run)
    code, _, err = _resume(run, data, capsys)
    assert code == 2 and "now holds 6" in single_error_line(err)
    assert snapshot(run) == before

    # The same checkpoint without a fingerprint (an older engine's): the position alone tells.
    _set_position(run, 2, drop_fingerprint=True)
    before = snapshot(run)
    code, _, err = _resume(run, data, capsys)
    line = single_error_line(err)
    assert code == 2, err
    assert "stopped after batch 2 of epoch 2" in line and "have 1 batch " in line and "--allow-data-change" in line
    assert snapshot(run) == before

    code, _, err = _resume(run, data, capsys, "--allow-data-change")
    assert code == 0, err
    assert "the interrupted epoch 2 restarts from its first batch" in err


def test_a_checkpoint_without_a_fingerprint_still_resumes(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    run = _train_one_epoch(tmp_path, capsys, data)
    _set_position(run, 0, drop_fingerprint=True)
    code, _, err = _resume(run, data, capsys)
    assert code == 0, err
    assert "error" not in err


def test_the_same_data_moved_elsewhere_keeps_its_fingerprint(tmp_path):
    """Paths are taken relative to the split's folder: a data set copied to another disk (or
    resumed on another machine) is the same data set."""
    data = make_folder(tmp_path / "data")
    moved = shutil.copytree(data, tmp_path / "elsewhere" / "copy")
    first = build_loaders("folder", str(data), 4, workers=0, image_size=32)[2].train_fingerprint
    assert build_loaders("folder", str(moved), 4, workers=0, image_size=32)[2].train_fingerprint == first
    os.rename(moved / "train" / "ant" / "0.jpg", moved / "train" / "ant" / "zz.jpg")
    assert build_loaders("folder", str(moved), 4, workers=0, image_size=32)[2].train_fingerprint != first


def test_in_memory_sets_are_fingerprinted_by_their_arrays(tmp_path):
    a = write_cifar10(tmp_path / "a" / "cifar-10-batches-py", pickle.dumps)
    b = shutil.copytree(a, tmp_path / "b" / "cifar-10-batches-py")
    fingerprint = build_loaders("cifar10", str(a), 2, workers=0)[2].train_fingerprint
    assert build_loaders("cifar10", str(b), 2, workers=0)[2].train_fingerprint == fingerprint
    with open(b / "data_batch_5", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"data"][0, 0] ^= 1   # one pixel of one image
    (b / "data_batch_5").write_bytes(pickle.dumps(batch))
    assert build_loaders("cifar10", str(b), 2, workers=0)[2].train_fingerprint != fingerprint
    digits = build_loaders("digits", None, 100, workers=0)[2].train_fingerprint
    assert digits and digits == build_loaders("digits", None, 100, workers=0)[2].train_fingerprint


# ---------------------------------------------------------------------------- CIFAR pickles
def py2_pickle(obj) -> bytes:
    """``obj`` as Python 2's cPickle (protocol 2) wrote the CIFAR files: str as BINSTRING, numpy
    arrays through ``numpy.core.multiarray._reconstruct`` with their bytes as a Python 2 str."""
    out = bytearray(b"\x80\x02")

    def put(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        elif isinstance(o, bytes):
            out.extend(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, (list, tuple)):
            out.extend(b"](" if isinstance(o, list) else b"(")
            for v in o:
                put(v)
            out.extend(b"e" if isinstance(o, list) else b"t")
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01")
            put(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\nU\x02" + o.dtype.str[1:].encode() + b"K\x00K\x01\x87R(K\x03U\x01"
                       + o.dtype.str[:1].encode() + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            put(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    put(obj)
    return bytes(out + b".")


def write_cifar10(root, dumps, labels=lambda n, rng: rng.integers(0, 10, n).tolist()):
    """cifar-10-batches-py with 5 x 8 training rows and 6 test rows (bytes keys, like the
    originals), each file written by ``dumps``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(dumps({
            b"batch_label": f"training batch {i} of 5".encode(),
            b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
            b"labels": labels(8, rng),
            b"filenames": [b"x.png"] * 8,
        }))
    (root / "test_batch").write_bytes(dumps({b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                                             b"labels": labels(6, rng)}))
    (root / "batches.meta").write_bytes(dumps({b"label_names": [f"c{i}".encode() for i in range(10)],
                                               b"num_vis": 3072}))
    return root


class _Payload:
    """What a crafted file does on loading: here, create a folder (``marker``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_crafted_cifar_pickle_is_refused_without_running_its_code(tmp_path, capsys):
    root = write_cifar10(tmp_path / "cifar-10-batches-py", pickle.dumps)
    marker = tmp_path / "the-payload-ran"
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": [0]}))
    runs = tmp_path / "runs"
    code, _, err = run_cli(["--dataset", "cifar10", "--data-dir", str(root), "--arch", "tiny", "-j", "0",
                            "--vis-every", "0", "--epochs", "1", "--output", str(runs)], capsys)
    line = single_error_line(err)
    assert not marker.exists(), "the pickle's code ran"
    assert code == 2, err
    assert str(root / "data_batch_1") in line and "mkdir" in line
    assert "re-download cifar-10-python.tar.gz" in line
    assert not runs.exists()


@pytest.mark.parametrize("dumps", [py2_pickle, pickle.dumps] + [
    (lambda p: (lambda o: pickle.dumps(o, protocol=p)))(p) for p in (0, 2, 5)],
    ids=["python2", "default", "protocol0", "protocol2", "protocol5"])
def test_legitimate_cifar_pickles_still_load(tmp_path, dumps):
    root = write_cifar10(tmp_path / "cifar-10-batches-py", dumps)
    reference = write_cifar10(tmp_path / "reference" / "cifar-10-batches-py", pickle.dumps)
    tr, va, info = build_loaders("cifar10", str(root), 8, workers=0, augment=False)
    ref_tr, ref_va, ref_info = build_loaders("cifar10", str(reference), 8, workers=0, augment=False)
    assert info.class_names == ref_info.class_names and info.train_size == ref_info.train_size
    assert torch.cat([y for _, y in va]).tolist() == torch.cat([y for _, y in ref_va]).tolist()
    tr.set_epoch(0)
    ref_tr.set_epoch(0)
    for (x, y), (rx, ry) in zip(tr, ref_tr):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_the_restricted_unpickler_rebuilds_numpy_values_and_refuses_the_rest():
    values = {b"u8": np.arange(6, dtype=np.uint8).reshape(2, 3), b"f4": np.linspace(0, 1, 5).astype(">f4"),
              "i64": np.int64(7), "list": [1, 2.5, b"x", "y", None, True], "set": {1, 2}, "empty": b""}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        raw = pickle.dumps(values, protocol=protocol)
        got, plain = arrays.restricted_load(io.BytesIO(raw)), pickle.loads(raw)
        assert np.array_equal(got[b"u8"], values[b"u8"]) and got[b"u8"].dtype == np.uint8
        assert np.array_equal(got[b"f4"], values[b"f4"]) and got[b"f4"].dtype == plain[b"f4"].dtype
        assert got["i64"] == 7 and got["list"] == values["list"] and got["set"] == {1, 2} and got["empty"] == b""
    py2 = arrays.restricted_load(io.BytesIO(py2_pickle({b"x": np.arange(12, dtype="<i4").reshape(3, 4)})),
                                 encoding="latin1")
    assert np.array_equal(py2["x"], np.arange(12).reshape(3, 4))
    for crafted in (pickle.dumps(_Payload("/nonexistent/x")), b"cbuiltins\neval\n(S'1+1'\ntR.",
                    b"c__builtin__\ngetattr\n."):
        with pytest.raises(arrays.ForbiddenPickle):
            arrays.restricted_load(io.BytesIO(crafted))
