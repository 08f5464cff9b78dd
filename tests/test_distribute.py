"""Multi-node data parallelism: scripts/run_distribute_train_cpu.sh as two nodes of one msrun job on loopback.

Each node is one launcher invocation with its own NODE_RANK and one CPU worker; node 1's output_dir
stands for its own disk. PYNATIVE mode: no graph compilation, so the job costs about a minute.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT
from data_images import write_idx
from test_train import CONFIG, read_idx

LAUNCHER = os.path.join(ROOT, "scripts", "run_distribute_train_cpu.sh")
DIGESTS = re.compile(r"^rank (\d)/2: data digest (\w+), parameter digest (\w+)$", re.M)
UNREACHABLE_TIMEOUT = 5  # CLUSTER_TIMEOUT, seconds, of the node whose master never answers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(node_rank, port, log_dir, flags, timeout=60, workers=2):
    """One launcher invocation: node node_rank, with one CPU worker, of a job of `workers`."""
    env = dict(os.environ, PYTHON=sys.executable, LOCAL_WORKERS="1", NODE_RANK=str(node_rank),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CLUSTER_TIMEOUT=str(timeout), LOG_DIR=str(log_dir))
    return subprocess.Popen(["bash", LAUNCHER, str(workers), CONFIG, *flags], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(node, timeout):
    """(returncode, stdout, stderr, seconds); a node still running after timeout seconds is stopped
    (msrun's SIGINT handler stops its workers) and has returncode None."""
    start = time.time()
    try:
        out, err = node.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        node.send_signal(signal.SIGINT)
        out, err = node.communicate(timeout=60)
        return None, out, err, time.time() - start
    return node.returncode, out, err, time.time() - start


def worker_logs(*log_dirs):
    return "".join(open(os.path.join(d, name)).read() for d in log_dirs for name in sorted(os.listdir(d))
                   if name.startswith("worker"))


def run_two_nodes(tmp_path, name, flags_of_node):
    port, logs = free_port(), [tmp_path / f"{name}_log{rank}" for rank in (0, 1)]
    nodes = [start_node(rank, port, logs[rank], flags_of_node(rank)) for rank in (0, 1)]
    with ThreadPoolExecutor() as pool:
        results = list(pool.map(lambda node: finish(node, timeout=600), nodes))
    text = worker_logs(*logs)
    for rank, (code, out, err, _) in enumerate(results):
        assert code == 0, f"node {rank} ended with {code}:\n{err[-2000:]}\n{text[-3000:]}"
        assert f"node {rank} of 2: " in out and f"--node_rank={rank} " in out and "--local_worker_num=1 " in out
    return text, {int(rank): (data, params) for rank, data, params in DIGESTS.findall(text)}


def test_two_nodes_train_in_sync_and_resume_from_a_shared_path_failures_are_one_line(tmp_path):
    data = str(tmp_path / "fashion")
    write_idx(data, "train", *read_idx("train", 64))
    write_idx(data, "test", *read_idx("test", 16))
    common = ["--dataset_path", data, "--batch_size", "8", "--steps_per_epoch", "2", "--epochs", "1",
              "--num_workers", "1", "--log_every", "1", "--mode", "pynative"]
    shared = tmp_path / "out"
    # Started first, they fail while the real job trains: a node whose master nobody runs, and a
    # one-machine job (the launcher's defaults) whose worker stops with an error of its own.
    lonely = start_node(1, free_port(), tmp_path / "lonely_log", [*common, "--output_dir", str(tmp_path / "lonely")],
                        timeout=UNREACHABLE_TIMEOUT)
    missing = tmp_path / "missing.ckpt"
    broken = start_node(0, free_port(), tmp_path / "broken_log",
                        [*common, "--output_dir", str(tmp_path / "broken"), "--resume", str(missing)], workers=1)
    waiter = ThreadPoolExecutor(2)
    lonely_result = waiter.submit(finish, lonely, UNREACHABLE_TIMEOUT + 120)
    broken_result = waiter.submit(finish, broken, 120)

    own_disk = {0: shared, 1: tmp_path / "node1_out"}
    _, trained = run_two_nodes(tmp_path, "train", lambda rank: [*common, "--output_dir", str(own_disk[rank])])
    assert sorted(trained) == [0, 1]
    assert trained[0][0] != trained[1][0], "both ranks read the same images"
    assert trained[0][1] == trained[1][1], "parameters differ between ranks after training"
    assert {"last.ckpt", "best.ckpt", "log.csv"} <= set(os.listdir(shared))
    assert not os.path.exists(own_disk[1]), "a rank other than 0 wrote to its output_dir"

    # Every node passes --resume last with the shared output_dir: each rank loads the trained weights.
    # (--epochs 1 again: nothing is left to train, so the digests are those of the checkpoint.)
    text, resumed = run_two_nodes(tmp_path, "resume", lambda rank: [*common, "--output_dir", str(shared),
                                                                    "--resume", "last"])
    assert text.count(f"resumed from {shared / 'last.ckpt'}: 1 epochs done") == 2
    assert resumed[0][1] == resumed[1][1] == trained[0][1], "a rank did not load the shared checkpoint"

    code, out, err, _ = broken_result.result()
    assert "node 0 of 1: " in out and "--local_worker_num=1 " in out
    assert code == 2 and err.strip().endswith(f"error: worker_0.log: nothing to resume: {missing} does not exist"), \
        err[-2000:]
    code, _, err, seconds = lonely_result.result()
    waiter.shutdown()
    assert code == 2 and "Traceback" not in err, f"the unreachable node ended with {code} after {seconds:.0f} s"
    assert err.strip().endswith("raise CLUSTER_TIMEOUT if nodes start far apart"), err[-2000:]
    assert f"node rank 1: the cluster of 2 workers did not form within {UNREACHABLE_TIMEOUT} s" in err


@pytest.mark.parametrize("workers,env,message", [
    ("2", {"LOCAL_WORKERS": "3"}, "LOCAL_WORKERS must be 1..WORKERS (2), got 3"),
    ("3", {"LOCAL_WORKERS": "2"}, "WORKERS (3) must be a multiple of LOCAL_WORKERS (2)"),
    ("2", {"LOCAL_WORKERS": "1", "NODE_RANK": "2"}, "NODE_RANK must be 0..1 for 2 node(s), got 2"),
    ("2", {"NODE_RANK": "first"}, "NODE_RANK must be a whole number, got 'first'"),
    ("2", {"MASTER_PORT": "80"}, "MASTER_PORT must be 1024..65535, got 80"),
    ("2", {"MASTER_ADDR": "node 0"}, "MASTER_ADDR must be a host name or IP address"),
    ("2", {"CLUSTER_TIMEOUT": "0"}, "CLUSTER_TIMEOUT must be at least 1 second"),
    ("two", {}, "WORKERS must be a whole number, got 'two'"),
])
def test_a_bad_cluster_shape_is_one_clear_error_before_anything_starts(workers, env, message):
    result = subprocess.run(["bash", LAUNCHER, workers, CONFIG], cwd=ROOT, capture_output=True, text=True,
                            timeout=30, env={**os.environ, **env})
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}") and not result.stdout


@pytest.mark.parametrize("address,message", [
    ("198.51.100.1", "node rank 0 runs the scheduler, so MASTER_ADDR must be an address of this machine; "
                     "198.51.100.1 is not"),
    ("no-such-host.invalid", "MASTER_ADDR 'no-such-host.invalid' is not usable: DNS resolution has failed"),
])
def test_node_rank_0_needs_a_master_address_of_its_own(tmp_path, address, message):
    env = dict(os.environ, PYTHON=sys.executable, MASTER_ADDR=address, LOCAL_WORKERS="1", CLUSTER_TIMEOUT="5",
               LOG_DIR=str(tmp_path))
    result = subprocess.run(["bash", LAUNCHER, "2", CONFIG], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message}", result.stderr[-2000:]
    assert not os.listdir(tmp_path), "msrun started a process"


@pytest.mark.parametrize("distribute,device", [("true", 5), ("false", 2)])
def test_each_msrun_worker_takes_the_device_msrun_gives_it(monkeypatch, distribute, device):
    import train

    chosen = []

    class Chosen(Exception):
        pass

    def record_and_stop(platform, device_id, mode):
        chosen.append(device_id)
        raise Chosen

    monkeypatch.setattr(train, "setup_device", record_and_stop)
    monkeypatch.setenv("DEVICE_ID", "5")  # msrun sets it to the worker's rank on its node
    with pytest.raises(Chosen):
        train.main(["--config", CONFIG, "--distribute", distribute, "--device_id", "2"])
    assert chosen == [device]
