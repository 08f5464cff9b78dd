"""scripts/compare_recipes.py: train.py runs that differ in one setting, and its errors."""
import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = "scripts/compare_recipes.py"
CONFIG = "configs/bimlp_t_fashion_mnist.yaml"


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_an_option_is_trained_and_tabulated(tmp_path):
    out = tmp_path / "recipes.json"
    proc = run("--config", CONFIG, "--epochs", "1", "--steps_per_epoch", "2", "--options", "augment=false+lr=4e-3",
               "--output_dir", str(tmp_path / "runs"), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row, = json.loads(out.read_text())["results"]
    assert row["settings"] == {"augment": "false", "lr": "4e-3"} and 0.0 <= row["val_top1"] <= 1.0
    saved = (tmp_path / "runs" / "augment_false_lr_4e-3" / "config.yaml").read_text()
    assert "augment: false" in saved and "lr: 0.004" in saved
    assert "| augment=false+lr=4e-3 |" in proc.stdout


def test_a_bad_option_is_refused_before_training(tmp_path):
    proc = run("--config", CONFIG, "--epochs", "1", "--options", "default;lr", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 2 and "bad option 'lr'" in proc.stderr
    proc = run("--config", CONFIG, "--epochs", "1", "--options", "speed=2", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 2 and "bad option 'speed=2'" in proc.stderr
