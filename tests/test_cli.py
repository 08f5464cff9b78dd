"""One vocabulary: --model names the variant in every command; the commands that read a checkpoint
also take --checkpoint_nm, the MindSpore model zoo's name for the same flag."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

import benchmark
import eval as eval_script
import export
import pack
import predict
import train
from conftest import ROOT

# Each command that reads a checkpoint, with its other required flags.
CHECKPOINT_READERS = {
    "eval.py": (eval_script, []),
    "export.py": (export, ["--checkpoint_path", "x.ckpt"]),
    "predict.py": (predict, ["--image", "x.png"]),
    "pack.py": (pack, ["--checkpoint_path", "x.ckpt", "--output", "x.packed"]),
}
FLAG = re.compile(r'add_argument\(\s*"(--\w+)"')


def command_sources():
    """The Python and shell commands a user runs: the top-level scripts and scripts/."""
    return sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "scripts", "*")))


@pytest.mark.parametrize("command", sorted(CHECKPOINT_READERS))
def test_checkpoint_nm_is_the_model_flag(command, capsys):
    module, required = CHECKPOINT_READERS[command]
    for flag in ("--model", "--checkpoint_nm"):
        args = module.parse_args(required + [flag, "BiMLP_T"])
        assert args.model == "BiMLP_T" and not hasattr(args, "checkpoint_nm")
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    assert capsys.readouterr().out.count("--checkpoint_nm") == 1


def test_train_names_the_variant_with_model():
    config, _ = train.parse_config(["--model", "BiMLP_T", "--dataset", "fashion_mnist"])
    assert config["model"] == "BiMLP_T"


def test_benchmark_model_selects_the_variants_of_every_part():
    configs = benchmark.configs(benchmark.parse_args(["--only", "eval,train", "--model", "BiMLP_T14",
                                                      "--batches", "1", "--paths", "fused"]))
    assert [(c["kind"], c["model"], c["size"]) for c in configs] == \
        [("eval", "BiMLP_T14", 28)] + [("train", "BiMLP_T14", 28)] * len(benchmark.TRAIN_PATHS)
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--model", "BiMLP_S,BiMLP_X"])


def test_benchmark_train_paths_select_the_train_configurations(capsys):
    configs = benchmark.configs(benchmark.parse_args(["--only", "train", "--model", "BiMLP_S",
                                                      "--train_paths", "fast,fused"]))
    assert [(c["path"], c["size"], c["batch"]) for c in configs] == [("fast", 224, 8), ("fused", 224, 8)]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--train_paths", "fast,xnor"])
    assert "unknown train path(s) xnor" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--paths", "fused,gpu"])
    assert "unknown path(s) gpu" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["benchmark.py", "scripts/compare_recipes.py", "scripts/benchmark_train_options.py"])
def test_results_files_are_checked_before_any_measurement(tmp_path, script):
    (tmp_path / "file").write_text("x")
    extra = ["--config", "configs/bimlp_t14_fashion_mnist.yaml", "--epochs", "1"] if "recipes" in script else []
    proc = subprocess.run([sys.executable, script, *extra, "--json", str(tmp_path / "file" / "out.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr, proc.stderr[-2000:]


def test_no_command_has_another_flag_for_the_variant():
    for path in command_sources():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        others = [flag for flag in FLAG.findall(text) if "model" in flag and flag != "--model"]
        assert not others, f"{os.path.relpath(path, ROOT)} names the variant with {others}; use --model"
        assert "--checkpoint_nm" not in text, f"{os.path.relpath(path, ROOT)}: use --model"


def test_benchmark_rounds_run_round_robin_and_report_each_configs_median(monkeypatch, tmp_path, capsys):
    speeds = {"fast": [100.0, 90.0, 120.0], "fused": [300.0, 200.0, 250.0]}
    order = []

    def run_config(cfg, max_gb):
        order.append(cfg["path"])
        return {"img_s": speeds[cfg["path"]].pop(0), "cpu_s": 1.0, "peak_rss_gb": 1.0, "compile_s": 1.0,
                "load_end": 0.0}

    monkeypatch.setattr(benchmark, "run_config", run_config)
    out = tmp_path / "bench.json"
    benchmark.main(["--only", "train", "--model", "BiMLP_T14", "--train_paths", "fast,fused", "--rounds", "3",
                    "--json", str(out)])
    assert order == ["fast", "fused"] * 3
    rows = json.loads(out.read_text())["results"]
    assert [(r["path"], r["img_s"], r["img_s_rounds"]) for r in rows] == [
        ("fast", 100.0, [90.0, 100.0, 120.0]), ("fused", 250.0, [200.0, 250.0, 300.0])]
    assert "| fused | 250.00 | 2.50 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--rounds", "0"])
