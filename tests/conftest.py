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



# ---------------------------------------------------------------------------- the session's exit
#: Seconds the interpreter may take to exit once pytest has finished.
EXIT_GRACE_S = 120


def pytest_unconfigure(config: pytest.Config) -> None:
    """A test run that hangs on its way out fails fast, and says where it hung.

    Why: at stop 30 CI printed "501 passed" and then the process did not exit for 90 minutes (a thread
    or process left blocked keeps the interpreter from finishing). From here on, if the interpreter
    is still alive EXIT_GRACE_S after pytest is done, every thread's stack goes to stderr and the run
    ends with status 1. A clean exit ends the process first, so this never fires on a healthy run.
    """
    import faulthandler
    import sys
    import threading

    main = str(getattr(sys.modules.get("__main__"), "__file__", None) or "")
    if Path(sys.argv[0]).name not in ("pytest", "py.test") and not main.endswith("pytest/__main__.py"):
        return  # pytest.main() inside a longer-lived program: its exit is not ours to time
    left = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if left:  # these are the threads the interpreter will wait for
        print(f"\nconftest: non-daemon threads alive at exit: {[t.name for t in left]}", file=sys.__stderr__)
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=sys.__stderr__)
