"""The ONNX Runtime session helper (`mai.session`), torch-free: a MAI model is
refused when its metadata is missing, the provider falls back to the CPU (and says
so) where CUDA is absent or does not load, a bad device name is one error, and a
copied model folder still opens. The model is the tiny one built with onnx.helper."""

import shutil
import sys

import pytest

onnx = pytest.importorskip("onnx")

from mai import session as session_mod  # noqa: E402
from mai.preprocess import prepare  # noqa: E402
from mai.session import SessionError, open_model  # noqa: E402


def test_not_a_mai_onnx_is_refused(tmp_path, onnx_model_dir):
    m = onnx.load(str(onnx_model_dir / "model.fp32.onnx"))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "plain.onnx"))
    with pytest.raises(SessionError, match="not a MAI model"):
        open_model(tmp_path / "plain.onnx", device="cpu")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(SessionError, match="cannot open"):
        open_model(tmp_path / "junk.onnx", device="cpu")
    with pytest.raises(SessionError, match="model.fp32.onnx"):
        open_model(tmp_path, device="cpu")


def test_provider_falls_back_to_cpu_without_cuda(onnx_model_dir, monkeypatch, capfd):
    # No driver here (or pretend so): auto runs on the CPU quietly, cuda refuses in one line.
    monkeypatch.setattr(session_mod, "_driver_loads", lambda: "no NVIDIA driver (test)")
    lines = []
    model = open_model(onnx_model_dir, device="auto", log=lines.append)
    assert model.provider == "CPUExecutionProvider"
    assert len(lines) == 1 and "CPU" in lines[0]
    with pytest.raises(SessionError, match="--device cuda"):
        open_model(onnx_model_dir, device="cuda")
    out, err = capfd.readouterr()
    assert out == "" and "[E:" not in err and "[W:" not in err


def test_cuda_that_does_not_load_is_detected(onnx_model_dir, monkeypatch):
    """A driver that 'loads' but a CUDA provider that falls back: auto says so,
    cuda refuses. Simulated by asking for CUDA on this CPU-only machine."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to fail")
    monkeypatch.setattr(session_mod, "_driver_loads", lambda: None)
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a real GPU is here")
    except ImportError:
        pass
    model = open_model(onnx_model_dir, device="auto")
    assert model.provider == "CPUExecutionProvider"
    assert model.fallback_reason and "did not load" in model.fallback_reason
    with pytest.raises(SessionError, match="did not load"):
        open_model(onnx_model_dir, device="cuda")


def test_bad_device_name(onnx_model_dir):
    with pytest.raises(SessionError, match="unknown device"):
        open_model(onnx_model_dir, device="tpu")


@pytest.mark.skipif(sys.platform != "linux", reason="checks the real CPU-only fallback on Linux CI")
def test_prepare_matches_spec_of_exported_model(onnx_model_dir):
    from PIL import Image

    model = open_model(onnx_model_dir, device="cpu")
    im = Image.new("RGB", (640, 480), (10, 200, 30))
    assert prepare(im, model.spec).shape == (200, 200, 3)


def test_copy_of_model_folder_still_opens(tmp_path, onnx_model_dir):
    dst = tmp_path / "copy"
    shutil.copytree(onnx_model_dir, dst)
    assert open_model(dst, device="cpu").model_id == open_model(onnx_model_dir, device="cpu").model_id
