"""Ctrl-C stops eval.py and train.py within seconds, even inside MindSpore's graph compilation,
with one line and exit status 130 (see src/context.py for why this needs care)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from data_images import write_idx


@pytest.fixture(scope="module")
def random_fashion(tmp_path_factory):
    """Fashion-MNIST-shaped idx files of random pixels: enough to start a run."""
    rng = np.random.default_rng(0)
    folder = str(tmp_path_factory.mktemp("fashion"))
    for split, count in (("train", 32), ("test", 8)):
        write_idx(folder, split, rng.integers(0, 256, (count, 28, 28)), rng.integers(0, 10, count))
    return folder


@pytest.mark.parametrize("script", ["eval.py", "train.py"])
def test_ctrl_c_during_graph_compilation_stops_within_seconds(random_fashion, tmp_path, script):
    common = ["--dataset_path", random_fashion, "--mode", "graph"]
    if script == "eval.py":
        # MindSpore's own operators: the largest graph, so the longest compilation (a few seconds
        # with the fused kernels on a fast machine, too short to be hit reliably)
        command = [*common, "--model", "BiMLP_T", "--fused", "false"]
        started, progress = "compiling the network graph", "eval:"
    else:
        command = [*common, "--config", os.path.join(ROOT, "configs", "bimlp_t_fashion_mnist.yaml"),
                   "--output_dir", str(tmp_path / "run"), "--batch_size", "8", "--num_workers", "1"]
        started, progress = "training BiMLP_T", "step 1/"
    proc = subprocess.Popen([sys.executable, script, *command], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if started in line:
            break
    time.sleep(1)  # inside the first graph compilation, which takes several seconds even when alone
    proc.send_signal(signal.SIGINT)
    start = time.time()
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest[-3000:]
    assert time.time() - start < 10
    assert progress not in rest, "the signal must arrive during compilation"
    assert rest.strip().splitlines()[-1] == "interrupted" and "Traceback" not in rest, rest[-3000:]
