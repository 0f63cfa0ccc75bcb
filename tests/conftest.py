"""Fixtures generated in code: no network, no ../shared, no downloaded weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.models import make_artifact, tiny_onnx_model

#: The stand-in CLIP backbone's fixtures (tiny_site, tiny, probe_dir), for the probe and graph tests.
pytest_plugins = ["support.clip"]


@pytest.fixture(autouse=True)
def _mai_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The app folder (scan state, caches) lives in a temporary folder in tests.
    monkeypatch.setenv("MAI_HOME", str(tmp_path_factory.mktemp("mai_home")))


@pytest.fixture(scope="session")
def exported_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random MAI CNN artifact with its fp32 ONNX export beside it (needs torch)."""
    pytest.importorskip("torch", reason="exporting needs the train extra")
    from export.onnx import export_onnx

    out = make_artifact(tmp_path_factory.mktemp("model") / "test-cnn")
    export_onnx(out, ("fp32",))
    return out


@pytest.fixture(scope="session")
def onnx_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder for the scan tests, made without torch (a scanner-only install runs them)."""
    return tiny_onnx_model(tmp_path_factory.mktemp("model") / "test-cnn")


@pytest.fixture
def model_args(onnx_model_dir: Path) -> list[str]:
    """mai-scan options for the random test model, on the CPU."""
    return ["--model", str(onnx_model_dir), "--device", "cpu", "--threads", "1"]

