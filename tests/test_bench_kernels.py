"""scripts/bench_kernels.py: times two builds of the training kernels and tells whether their bits differ."""
import importlib.util
import os
import shutil
import subprocess
import sys

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "bench_kernels.py")


def load_script():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_kernel_whose_bits_changed_is_reported(tmp_path):
    bench = load_script()
    changed = tmp_path / "changed"
    shutil.copytree(os.path.join(ROOT, "src"), changed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    source = changed / "fused_train.cc"
    text = source.read_text()
    line = "v[0] = at(dt + o) + at(dq + o) * ste(at(t + o));"
    assert line in text
    source.write_text(text.replace(line, "v[0] = at(dt + o) + at(dq + o) * ste(at(t + o)) * 0.5f;"))
    selected = {name: case for name, case in bench.cases(2).items()
                if name in ("MoveBinarizeTrainGrad", "MoveBinarizeTrain")}
    rows = {name: same for name, _, _, same in
            bench.compare(str(changed), os.path.join(ROOT, "src"), selected, 1, 0.001, str(tmp_path))}
    assert rows == {"MoveBinarizeTrain": True, "MoveBinarizeTrainGrad": False}


def test_the_command_compares_against_a_revision():
    proc = run("--baseline", "HEAD", "--only", "WaveMixTrain", "--batch", "2", "--rounds", "1", "--seconds", "0.001")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["WaveMixTrain", "WaveMixTrainGrad"], proc.stdout
    assert all(float(row[3]) > 0 for row in rows), proc.stdout


def test_bad_arguments_are_errors():
    proc = run("--only", "NoSuchKernel")
    assert proc.returncode == 2 and "no kernel's name contains 'NoSuchKernel'" in proc.stderr
    proc = run("--baseline", "no-such-revision", "--only", "Mix3")
    assert proc.returncode == 2 and "--baseline no-such-revision: no src/" in proc.stderr
    proc = run("--rounds", "0")
    assert proc.returncode == 2 and "--rounds must be at least 1" in proc.stderr
