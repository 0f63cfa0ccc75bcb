"""ONNX export (`export/`): graph contract, metadata, parity, refusal of bad
checkpoints. The session helper's own tests, which need no torch, are in
tests/core/test_session.py."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from support.models import make_artifact

pytest.importorskip("torch", reason="export needs the train extra")
onnx = pytest.importorskip("onnx", reason="export needs the train extra")

from export.onnx import ExportError, export_onnx, real_images  # noqa: E402
from mai.artifact import ArtifactError, load_artifact  # noqa: E402
from mai.session import open_model  # noqa: E402
from mai_train.checkpoint import load_torch_model  # noqa: E402
from mai_train.cli import cli  # noqa: E402


def test_graph_contract_and_metadata_round_trip(exported_model_dir):
    m = onnx.load(str(exported_model_dir / "model.fp32.onnx"))
    (inp,) = m.graph.input
    assert inp.name == "image"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 200, 200, 3]
    assert [o.name for o in m.graph.output] == ["logit", "prob"]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in m.graph.output)
    assert m.opset_import[0].version >= 17
    art = load_artifact(exported_model_dir)
    model = open_model(exported_model_dir, device="cpu")
    assert model.model_id == art.model_id
    assert model.spec == art.spec
    assert model.threshold == art.threshold and model.uncertain == art.uncertain
    assert model.meta["mai.checkpoint_sha256"] == art.meta["weights_sha256"]
    assert model.precision == "fp32" and model.provider == "CPUExecutionProvider"


def test_uint8_path_equals_reference_preprocessing(exported_model_dir):
    """Feeding prepare()'s bytes to ONNX gives torch's probability on the same bytes,
    and the graph's own normalisation equals the reference (x/255 - mean)/std."""
    import torch

    art = load_artifact(exported_model_dir)
    x = real_images(art)
    torch_model = load_torch_model(art)
    with torch.inference_mode():
        want = torch.sigmoid(torch_model(torch.from_numpy(x))).numpy()
        norm = torch_model.normalise(torch.from_numpy(x)).permute(0, 2, 3, 1).numpy()
    from mai.preprocess import normalise

    assert np.allclose(norm, normalise(x, art.spec), atol=1e-6)
    logit, prob = open_model(exported_model_dir, device="cpu").predict(x)
    assert prob.dtype == np.float32 and prob.shape == (len(x),)
    assert np.max(np.abs(prob - want)) <= 1e-4
    assert np.allclose(1 / (1 + np.exp(-logit)), prob, atol=1e-6)


def test_dynamic_batch(exported_model_dir):
    model = open_model(exported_model_dir, device="cpu")
    for n in (1, 7):
        _, p = model.predict(np.zeros((n, 200, 200, 3), np.uint8))
        assert p.shape == (n,)


def test_fp16_export_within_tolerance(tmp_path):
    out = make_artifact(tmp_path / "m", seed=3)
    (r16,) = export_onnx(out, ("fp16",))
    assert r16.max_diff_random <= 1e-2 and r16.max_diff_real <= 1e-2
    m = onnx.load(str(out / "model.fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert m.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # On a CPU the fp32 file is preferred when both exist; fp16 is for GPUs.
    export_onnx(out, ("fp32",))
    assert open_model(out, device="cpu").precision == "fp32"
    assert open_model(out / "model.fp16.onnx", device="cpu").precision == "fp16"


def test_int8_export_is_the_stored_form_the_scanner_expands(tmp_path):
    out = make_artifact(tmp_path / "m", seed=8)
    (r8,) = export_onnx(out, ("int8",))
    assert r8.max_diff_random <= 1e-2 and r8.max_diff_real <= 1e-2 and "CUDA" not in r8.line()
    m = onnx.load(str(out / "model.int8.onnx"))
    assert any(i.data_type == onnx.TensorProto.INT8 for i in m.graph.initializer)
    assert "DequantizeLinear" in {n.op_type for n in m.graph.node}
    model = open_model(out, device="cpu")  # the folder's only file: expanded to the CPU's fp32
    assert model.precision == "fp32" and model.source == out / "model.int8.onnx" and model.path != model.source
    x = real_images(load_artifact(out))
    import torch

    with torch.inference_mode():
        want = torch.sigmoid(load_torch_model(load_artifact(out))(torch.from_numpy(x))).numpy()
    assert np.max(np.abs(model.predict(x)[1] - want)) <= 1e-2


def test_shipped_model_without_torch_weights_says_how_to_restore_them():
    with pytest.raises(ArtifactError, match=r"ships this model as ONNX only: restore its torch weights with `git show"):
        export_onnx("mai-cnn-cifake", ("fp32",))


def test_failed_parity_leaves_no_file(tmp_path, monkeypatch):
    out = make_artifact(tmp_path / "m", seed=4)
    import export.onnx as ex

    monkeypatch.setitem(ex.TOLERANCE, "fp32", -1.0)  # nothing can pass
    with pytest.raises(ExportError, match="parity failed"):
        export_onnx(out, ("fp32",))
    assert not list(out.glob("*.onnx")) and not list(out.glob(".*partial"))


def test_corrupt_or_mismatched_checkpoint_refused(tmp_path):
    out = make_artifact(tmp_path / "m", seed=5)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="does not match the hash"):
        export_onnx(out)
    other = make_artifact(tmp_path / "o", seed=6)
    meta = json.loads((other / "mai.json").read_text())
    meta["architecture"] = {"name": "mai_cnn", "args": {"channels": [8, 16, 32]}}
    (other / "mai.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="does not fit architecture"):
        export_onnx(other)
    r = CliRunner().invoke(cli, ["export", "onnx", "--model", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and isinstance(r.exception, ArtifactError)


def test_cli_export_all(tmp_path):
    out = make_artifact(tmp_path / "m", seed=7)
    r = CliRunner().invoke(cli, ["export", "onnx", "--model", str(out), "--precision", "all",
                                 "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == ["model.fp16.onnx", "model.fp32.onnx"]
    assert "parity vs torch" in r.stderr
