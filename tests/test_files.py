"""Writing and reading files safely: atomic writes (a failure inside the writer leaves the old file
and no temporary), folder locks, CRC-checked checkpoints, and Ctrl-C that waits for a write."""
import errno
import os
import signal
import subprocess
import sys
import time

import mindspore as ms
import mindspore.train.serialization as serialization
import numpy as np
import pytest

from conftest import ROOT
from src.checkpoint import BINARY_MARKER, load_weights, read_checkpoint, save_checkpoint
from src.context import UserError
from src.files import FolderLock, atomic_write, check_output_file, write_text
from src.wavemlp_20_3 import create_model


def listing(folder):
    return sorted(os.listdir(folder))


@pytest.fixture(scope="module")
def tiny_net():
    ms.set_seed(3)
    return create_model("BiMLP_T")


@pytest.fixture
def saved(tmp_path, tiny_net):
    """A checkpoint written by the package, and its bytes."""
    path = str(tmp_path / "last.ckpt")
    save_checkpoint(tiny_net, path, append_dict={BINARY_MARKER: 1})
    with open(path, "rb") as f:
        return path, f.read()


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()])
def test_a_failure_inside_mindspores_checkpoint_writer_leaves_the_old_file_and_no_temporary(
        monkeypatch, saved, tiny_net, failure):
    path, before = saved
    written = []

    def failing(writer):
        def write_some_then_fail(name, value, f, *args, **kwargs):
            if len(written) == 3:  # some parameters are on disk when the disk fills up
                raise failure
            written.append(name)
            return writer(name, value, f, *args, **kwargs)
        return write_some_then_fail

    for writer in ("_write_parameter_data", "_write_parameter_bytes_data"):  # arrays, tensors
        monkeypatch.setattr(serialization, writer, failing(getattr(serialization, writer)))
    expected = UserError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as raised:
        save_checkpoint(tiny_net, path, append_dict={BINARY_MARKER: 1})
    assert len(written) == 3, "the failure must happen inside the save"
    if expected is UserError:
        assert f"cannot write {path}: no space left on the device" in str(raised.value)
    assert listing(os.path.dirname(path)) == ["last.ckpt"]
    with open(path, "rb") as f:
        assert f.read() == before
    assert len(read_checkpoint(path)) == len(ms.load_checkpoint(path))


def test_atomic_write_replaces_whole_files_and_fails_cleanly(tmp_path):
    target = tmp_path / "sub" / "log.csv"
    write_text(str(target), "a\n")
    write_text(str(target), "b\n")
    assert target.read_text() == "b\n" and listing(target.parent) == ["log.csv"]

    def half_then_full(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="no space left"):
        atomic_write(str(target), half_then_full)
    assert target.read_text() == "b\n" and listing(target.parent) == ["log.csv"]


def test_output_paths_under_a_file_are_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_file(str(tmp_path / "file" / "out.npz"), "--output")
    with pytest.raises(UserError, match="is a folder"):
        check_output_file(str(tmp_path), "--output")
    with pytest.raises(UserError, match="cannot write"):
        write_text(str(tmp_path / "file" / "config.yaml"), "x")


def test_a_folder_lock_names_its_holder(tmp_path):
    lock = FolderLock(str(tmp_path), "train.py")
    with pytest.raises(UserError, match=rf"in use by train.py \(pid {os.getpid()} on host"):
        FolderLock(str(tmp_path), "train.py")
    lock.release()
    FolderLock(str(tmp_path), "train.py").release()


def test_checkpoints_carry_a_crc_and_a_damaged_one_is_refused(tmp_path, saved, tiny_net):
    path, data = saved
    assert data[-17:-10] == b"crc_num"
    # 64 flipped bytes inside the largest weight: the file still parses, only numbers change.
    weight = max((p.asnumpy() for p in tiny_net.get_parameters()), key=np.size)
    start = data.find(weight.tobytes())
    assert start > 0
    damaged = bytearray(data)
    for index in np.random.default_rng(0).choice(weight.nbytes, 64, replace=False):
        damaged[start + index] ^= 0x5A
    bad = tmp_path / "damaged.ckpt"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match="is damaged: its contents do not match the CRC32"):
        load_weights(create_model("BiMLP_T"), str(bad), "BiMLP_T")
    plain = tmp_path / "plain.ckpt"  # other tools' checkpoints have no CRC and still load
    ms.save_checkpoint(tiny_net, str(plain))
    load_weights(create_model("BiMLP_T"), str(plain), "BiMLP_T")


def test_empty_and_renamed_checkpoints(tmp_path, saved):
    path, data = saved
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match=r"is empty \(0 bytes\)"):
        read_checkpoint(str(tmp_path / "empty.ckpt"))
    (tmp_path / "model.ckpt.bak").write_bytes(data)
    assert read_checkpoint(str(tmp_path / "model.ckpt.bak")).keys() == read_checkpoint(path).keys()
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a MindSpore checkpoint, or damaged"):
        read_checkpoint(str(tmp_path / "notes.ckpt"))


INTERRUPTED_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from src.context import run_cli
from src.files import atomic_write, write_text


def slow_write(tmp):
    with open(tmp, "w") as f:
        f.write("half of the new contents")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)


def main():
    write_text({target!r}, "old contents")
    atomic_write({target!r}, slow_write)


run_cli(main)
"""


def test_ctrl_c_during_a_write_stops_at_once_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "log.csv"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_WRITER.format(root=ROOT, target=str(target))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGINT)
    start = time.time()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == "interrupted\n"
    assert time.time() - start < 5
    assert listing(tmp_path) == ["log.csv"] and target.read_text() == "old contents"
