"""Without a C++ compiler or a writable cache the network runs its unfused operators (this module
needs no compiler, unlike tests/test_fused.py)."""
import warnings

import pytest

from src import fused
from src.wavemlp_20_3 import create_model


@pytest.mark.parametrize("broken", ["no compiler", "unwritable cache"])
def test_without_a_library_the_network_runs_unfused(monkeypatch, tmp_path, broken):
    monkeypatch.setattr(fused, "_library", {})
    if broken == "no compiler":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    else:
        (tmp_path / "file").write_text("a file where the cache directory should be")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fused.library_path() is None
    assert any("without its fused CPU kernels" in str(w.message) for w in caught)
    assert not create_model("BiMLP_T", fused=None).fused
    with pytest.raises(ValueError, match="C\\+\\+ compiler"):
        create_model("BiMLP_T", fused=True)
