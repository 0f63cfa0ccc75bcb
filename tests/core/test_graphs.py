"""Graph rewrites (mai.graphs): fp16 for CUDA, the int8 storage form and its
expansion; the backbone's fp16 graph; the shipped CIFAKE model stored as int8.

fp16 runs on ONNX Runtime's CPU provider too (slower), so all of it is checked here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="graph rewrites need onnx")

from click.testing import CliRunner  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from support import clip as stand_in  # noqa: E402

from mai import backbone as bbmod  # noqa: E402
from mai import graphs  # noqa: E402
from mai.appdir import app_dir  # noqa: E402
from mai.session import open_model, precisions_for, resolve_onnx  # noqa: E402

# The stand-in CLIP backbone and a probe trained on it (tiny, probe_dir) come from tests/support/clip.py.

# The shipped CIFAKE model's fp32 file (before it was stored as int8) on the five
# bundled examples, in file-name order: the int8 form must keep these scores.
CIFAKE_FP32_EXAMPLES = [0.625519, 0.26116, 0.009944, 0.859677, 0.014724]


def _run(model, feeds: dict[str, np.ndarray], out: str) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([out], feeds)[0]


def _block(opset: int = 14) -> onnx.ModelProto:
    """x (N, 5, 16) -> MatMul -> a layer norm spelled as exporters do below opset 17 ->
    Softmax -> MatMul -> y: the pieces of a transformer block fp16 has to handle."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "beta"),
             numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32) * 0.3, "w2")]
    const = [helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
             helper.make_node("Constant", [], ["eps"], value=numpy_helper.from_array(np.array(1e-5, np.float32)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["mu"], axes=[-1]),
             helper.make_node("Sub", ["h", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["g"]),
             helper.make_node("Add", ["g", "beta"], ["ln"]),
             helper.make_node("Softmax", ["ln"], ["sm"], axis=-1),
             helper.make_node("MatMul", ["sm", "w2"], ["y"])]
    graph = helper.make_graph(const + nodes, "block",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 8]),
                               helper.make_tensor_value_info("ln", TensorProto.FLOAT, ["N", 5, 16])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_to_fp16_fuses_layer_norms_with_fp32_statistics_and_keeps_io_types() -> None:
    m32 = _block()
    m16 = graphs.to_fp16(m32)
    ops = [n.op_type for n in m16.graph.node]
    assert "Pow" not in ops and "ReduceMean" not in ops and ops.count("LayerNormalization") == 1
    ln = next(n for n in m16.graph.node if n.op_type == "LayerNormalization")
    assert {a.name: a.i for a in ln.attribute if a.name == "stash_type"} == {"stash_type": 1}
    assert m16.opset_import[0].version == graphs.LAYER_NORM_OPSET
    assert all(i.data_type == TensorProto.FLOAT16 for i in m16.graph.initializer)
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*m16.graph.input, *m16.graph.output])
    # Large activations, |x - mean| up to 430: squared, past fp16's 65504. CUDA has fp16
    # kernels for Pow and ReduceMean and would overflow there; the CPU provider runs them in
    # fp32, so here the values are checked, and the fusion by the graph's structure above.
    x = np.random.default_rng(1).standard_normal((3, 5, 16)).astype(np.float32) * 40
    for out in ("y", "ln"):
        want, got = _run(m32, {"x": x}, out), _run(m16, {"x": x}, out)
        assert got.dtype == np.float32 and np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=0.02)
    assert _run(m32, {"x": x}, "ln").std() > 0.5  # the layer norm really ran on large values


def test_int8_weights_round_trip() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((120, 1000)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(120, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((120, 3)).astype(np.float32), "small")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
             helper.make_node("MatMul", ["h", "small"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    q = graphs.quantize_weights(m, min_size=10_000)
    stored = {i.name: i.data_type for i in q.graph.initializer}
    assert stored["w.int8"] == TensorProto.INT8 and "w" not in stored and stored["small"] == TensorProto.FLOAT
    assert [n.op_type for n in q.graph.node].count("DequantizeLinear") == 1
    back = graphs.dequantize(q)
    assert "DequantizeLinear" not in [n.op_type for n in back.graph.node]
    w_back = numpy_helper.to_array(next(i for i in back.graph.initializer if i.name == "w"))
    step = np.abs(w).max(axis=1, keepdims=True) / 127  # one scale per output row
    assert np.all(np.abs(w_back - w) <= step / 2 + 1e-7)
    x = rng.standard_normal((4, 1000)).astype(np.float32)
    np.testing.assert_allclose(_run(back, {"x": x}, "y"), _run(q, {"x": x}, "y"), rtol=1e-5, atol=1e-4)
    with pytest.raises(graphs.GraphError, match="no MatMul/Gemm weight"):
        graphs.quantize_weights(m, min_size=10**9)


def test_precision_rule(monkeypatch) -> None:
    from mai import quantize

    monkeypatch.setattr(quantize, "cpu_has_fast_int8", lambda: False)
    assert precisions_for("cuda") == ("fp16", "fp32", "int8") and precisions_for("cpu") == ("fp32", "int8", "fp16")
    assert precisions_for("cuda", "fp32") == ("fp32", "fp16", "int8")


def test_shipped_cifake_model_is_int8_and_expanded_once_per_precision() -> None:
    from export.onnx import real_images
    from mai.artifact import load_artifact

    folder = load_artifact("mai-cnn-cifake").path
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("__")) == [
        "README.md", "mai.json", "model.int8.onnx"]  # the card, the metadata, the int8 graph
    assert resolve_onnx("mai-cnn-cifake", "cpu") == resolve_onnx("mai-cnn-cifake", "cuda") == folder / "model.int8.onnx"
    x = real_images(load_artifact("mai-cnn-cifake"))
    lines: list[str] = []
    for precision in ("fp32", "fp16"):
        model = open_model("mai-cnn-cifake", "cpu", log=lines.append, precision=precision)
        assert model.precision == precision and model.source == folder / "model.int8.onnx"
        assert model.path.parent == app_dir() / "models" and model.meta["mai.expanded_from"].startswith("model.int8")
        np.testing.assert_allclose(model.predict(x)[1], CIFAKE_FP32_EXAMPLES, atol=3e-3)
        mtime = model.path.stat().st_mtime_ns
        assert open_model("mai-cnn-cifake", "cpu", precision=precision).path.stat().st_mtime_ns == mtime
    assert sum("expanding model.int8.onnx" in ln for ln in lines) == 2  # once per precision, then cached
    assert open_model("mai-cnn-cifake", "cpu").precision == "fp32"  # the CPU's rule


def test_backbone_fp16_graph_is_cached_beside_fp32_and_close_to_it(tiny) -> None:
    f32 = bbmod.feature_graph(tiny)
    f16 = bbmod.feature_graph(tiny, precision="fp16")
    assert f16 != f32 and f16.parent == f32.parent
    assert f".g{bbmod.GRAPH_VERSION}." in f16.name and "fp16" in f16.name
    mtime = f16.stat().st_mtime_ns
    assert bbmod.feature_graph(tiny, precision="fp16") == f16 and f16.stat().st_mtime_ns == mtime  # built once
    m = onnx.load(str(f16))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in m.graph.output)
    x = np.random.default_rng(3).integers(0, 256, (6, stand_in.SIDE, stand_in.SIDE, 3), dtype=np.uint8)
    for out in bbmod.FEATURES:
        want = stand_in.cpu_session(f32).run([out], {"image": x})[0]
        got = stand_in.cpu_session(f16).run([out], {"image": x})[0]
        np.testing.assert_allclose(got, want, atol=0.02 * max(1.0, float(np.abs(want).max())))
    with pytest.raises(bbmod.BackboneError, match="unknown precision"):
        bbmod.feature_graph(tiny, precision="int4")


def test_probe_runs_its_backbone_in_fp16_and_exports_all(probe_dir: Path, tmp_path: Path) -> None:
    from mai_train.cli import cli

    x = np.random.default_rng(4).integers(0, 256, (8, stand_in.SIDE, stand_in.SIDE, 3), dtype=np.uint8)
    fp32 = open_model(probe_dir, "cpu")
    fp16 = open_model(probe_dir, "cpu", precision="fp16")
    assert fp32.precision == "fp32" and fp16.precision == "fp16" and "backbone tiny-clip fp16" in fp16.describe()
    np.testing.assert_allclose(fp16.predict(x)[1], fp32.predict(x)[1], atol=1e-2)
    out = tmp_path / "export"
    r = CliRunner().invoke(cli, ["export", "onnx", "--model", str(probe_dir), "--precision", "all", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "parity vs the numpy head" in r.stderr and "parity vs the fp32 backbone" in r.stderr
    assert "CUDA: no usable GPU here" in r.stderr or "CUDA session ok" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.fp32.onnx"]  # the fp16 part is the backbone's graph
    assert json.loads(fp16.meta["mai.backbone"])["name"] == "tiny-clip"
