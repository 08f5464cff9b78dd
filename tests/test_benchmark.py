"""scripts/benchmark_train_options.py: measures train.py's step and rejects bad arguments."""
import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = "scripts/benchmark_train_options.py"


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_one_option_is_measured_and_written(tmp_path):
    out = tmp_path / "options.json"
    proc = run("--model", "BiMLP_T", "--options", "batch=32", "--min_seconds", "0", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [(r["option"], r["batch"]) for r in rows] == [("batch=32", 32)]
    assert rows[0]["img_s"] > 0 and rows[0]["steps"] >= 1, rows
    assert "| batch=32 | 32 |" in proc.stdout


def test_unknown_option_or_model_is_an_error():
    proc = run("--options", "default,threads=9")
    assert proc.returncode == 2 and "unknown option(s) threads=9" in proc.stderr
    proc = run("--model", "BiMLP_X")
    assert proc.returncode == 2 and "unknown model 'BiMLP_X'" in proc.stderr


def test_an_unwritable_json_path_is_refused_before_measuring(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run("--json", str(tmp_path / "file" / "out.json"))
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr
