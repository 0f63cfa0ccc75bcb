"""Static int8 backbone graphs (mai.quantize): calibration, SmoothQuant folding, the
QDQ graph, batch invariance, the precision rule and `--precision`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="int8 graphs need onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from support import clip as stand_in  # noqa: E402

from mai import backbone as bbmod  # noqa: E402
from mai import quantize as Q  # noqa: E402
from mai.graphs import GraphError  # noqa: E402
from mai.session import INT8_CALIBRATION, open_model, precisions_for  # noqa: E402

# The stand-in CLIP backbone's fixtures (tiny_site, tiny, probe_dir) come from tests/support/clip.py.
D, T = 32, 7  # width, tokens


def _block() -> onnx.ModelProto:
    """image uint8 (N, T, D, 1) -> a transformer-like block: a layer norm's affine
    step (with outlier channels) read by two weight products and a Shape, a sigmoid
    GELU MLP, a last projection; outputs `y`, `proj` and an extra one, `extra`."""
    rng = np.random.default_rng(0)
    gamma = rng.uniform(0.5, 1.5, D).astype(np.float32)
    gamma[[3, 17]] = 40.0  # outlier channels, as CLIP's post-norm activations have
    w = {"wq": (D, D), "wk": (D, D), "w1": (D, 4 * D), "w2": (4 * D, D), "wp": (D, 8)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32), k)
             for k, s in w.items()]
    inits += [numpy_helper.from_array(gamma, "gamma"),
              numpy_helper.from_array(rng.standard_normal(D).astype(np.float32) * 0.1, "beta"),
              numpy_helper.from_array(rng.standard_normal(4 * D).astype(np.float32) * 0.1, "b1"),
              numpy_helper.from_array(np.array([0, T, D], np.int64), "shape"),
              numpy_helper.from_array(np.ones(D, np.float32), "ones"),
              numpy_helper.from_array(np.array(1.0 / 64, np.float32), "div")]
    nodes = [helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["xf", "shape"], ["x0"]),
             helper.make_node("Mul", ["x0", "div"], ["x"]),
             helper.make_node("LayerNormalization", ["x", "ones"], ["n"], axis=-1, epsilon=1e-5),
             helper.make_node("Mul", ["n", "gamma"], ["g"]),
             helper.make_node("Add", ["g", "beta"], ["ln"]),
             helper.make_node("Shape", ["ln"], ["ln_shape"]),
             helper.make_node("MatMul", ["ln", "wq"], ["q"]),
             helper.make_node("MatMul", ["ln", "wk"], ["k"]),
             helper.make_node("Add", ["q", "k"], ["qk"]),
             helper.make_node("MatMul", ["qk", "w1"], ["h0"]),
             helper.make_node("Add", ["b1", "h0"], ["h"]),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(1.702, np.float32))),
             helper.make_node("Mul", ["h", "c"], ["hc"]),
             helper.make_node("Sigmoid", ["hc"], ["sig"]),
             helper.make_node("Mul", ["h", "sig"], ["gelu"]),
             helper.make_node("MatMul", ["gelu", "w2"], ["y"]),
             helper.make_node("MatMul", ["y", "wp"], ["proj"]),
             helper.make_node("Identity", ["ln_shape"], ["extra"])]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                             ["N", T, D, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T, D]),
                               helper.make_tensor_value_info("proj", TensorProto.FLOAT, ["N", T, 8]),
                               helper.make_tensor_value_info("extra", TensorProto.INT64, [3])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, T, D, 1), dtype=np.uint8)


def _run(model: onnx.ModelProto, x: np.ndarray, outs: list[str], fused: bool = True) -> list[np.ndarray]:
    """fused=False: no graph optimisation, so each DequantizeLinear -> MatMul runs in
    float and the result is the quantization scheme's alone, the same on every CPU
    (fused, ONNX Runtime's integer kernels give results that depend on the CPU: on an AMD
    EPYC without VNNI these tests' closeness checks failed; benchmarks/README.md)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not fused:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(outs, {"image": x})


def _calibrated(m: onnx.ModelProto, alpha: float = 0.8) -> Q.Calibration:
    st = Q.collect(m, (_images(8, s) for s in range(4)))
    return Q.calibration(m, st, "p99.99", alpha)


def test_smoothing_folds_into_the_norm_and_the_gelu_without_changing_the_function() -> None:
    m = _block()
    where = Q.smoothable(m)
    assert {k: v[0] for k, v in where.items()} == {"ln": "norm", "gelu": "gelu"}  # qk: an Add writes it, no norm
    s = {x: np.random.default_rng(1).uniform(0.2, 5.0, n).astype(np.float32) for x, n in (("ln", D), ("gelu", 4 * D))}
    sm = Q.smooth(m, s)
    x = _images(5, 9)
    for want, got in zip(_run(m, x, ["y", "proj"]), _run(sm, x, ["y", "proj"]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(GraphError, match="cannot be folded"):
        Q.smooth(m, {"qk": np.ones(D, np.float32)})


def test_int8_graph_keeps_every_output_is_close_and_batch_invariant() -> None:
    m = _block()
    cal = Q.calibration(m, Q.collect(m, (_images(8, s) for s in range(4))), "p99.99", 0.8)
    assert set(cal.ranges) == {"ln", "qk", "gelu"} and cal.info["fp32"] == ["y"]  # the last product stays fp32
    assert set(cal.smooth) == {"ln", "gelu"}
    st = Q.collect(m, (_images(8, s) for s in range(2)))
    kept = Q.calibration(m, st, "p99.99", 0.8, keep_fp32=("gelu",))
    assert set(kept.ranges) == {"ln", "qk"} and kept.info["fp32"] == ["gelu", "y"]
    cal = Q.Calibration.load(_write(cal))  # through its file, as shipped
    q = Q.quantize(m, cal)
    assert [o.name for o in q.graph.output] == [o.name for o in m.graph.output]  # `extra` too
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 4 + 4  # one per reader, one per weight
    x = _images(16, 42)
    (want,) = _run(m, x, ["y"])
    (got,) = _run(q, x, ["y"])
    cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() > 0.99, cos.min()
    # Static scales: a row's result does not depend on its batch mates.
    alone = np.concatenate([_run(q, x[i:i + 1], ["y"])[0] for i in range(len(x))])
    np.testing.assert_array_equal(alone, got)
    halves = np.concatenate([_run(q, x[:5], ["y"])[0], _run(q, x[5:], ["y"])[0]])
    np.testing.assert_array_equal(halves, got)


def test_without_smoothing_outlier_channels_cost_accuracy() -> None:
    m = _block()
    x = _images(16, 42)
    (want,) = _run(m, x, ["y"])
    err = {}
    for alpha in (0.0, 0.8):
        (got,) = _run(Q.quantize(m, _calibrated(m, alpha)), x, ["y"], fused=False)
        err[alpha] = float(np.abs(got - want).mean())
    assert err[0.8] < 0.8 * err[0.0], err


def test_a_calibration_for_another_graph_is_refused(tmp_path: Path) -> None:
    m = _block()
    cal = Q.Calibration({"no_such_tensor": (-1.0, 1.0)})
    with pytest.raises(GraphError, match="another graph"):
        Q.quantize(m, cal)
    bad = tmp_path / "int8.json"
    bad.write_text('{"schema": "something else"}')
    with pytest.raises(GraphError, match="not an int8 calibration file"):
        Q.Calibration.load(bad)


def _write(cal: Q.Calibration, folder: Path | None = None) -> Path:
    import tempfile

    folder = folder or Path(tempfile.mkdtemp())
    p = folder / INT8_CALIBRATION
    p.write_text(cal.to_json())
    return p


def _tiny_calibration(tiny: bbmod.Backbone, folder: Path) -> Path:
    fp32 = onnx.load(str(bbmod.feature_graph(tiny)))
    x = (np.random.default_rng(s).integers(0, 256, (8, stand_in.SIDE, stand_in.SIDE, 3), dtype=np.uint8)
         for s in range(3))
    return _write(Q.calibration(fp32, Q.collect(fp32, x), "p99.99", 0.8), folder)


def test_backbone_int8_graph_is_cached_keeps_every_output_and_is_batch_invariant(tiny, tmp_path: Path,
                                                                               monkeypatch) -> None:
    cal = _tiny_calibration(tiny, tmp_path)
    f32 = bbmod.feature_graph(tiny)
    f8 = bbmod.feature_graph(tiny, precision="int8", calibration=cal)
    assert f8 != f32 and f8.parent == f32.parent and f".g{bbmod.GRAPH_VERSION}.int8v{Q.INT8_VERSION}-" in f8.name
    mtime = f8.stat().st_mtime_ns
    assert bbmod.feature_graph(tiny, precision="int8", calibration=cal).stat().st_mtime_ns == mtime  # built once
    m32, m8 = onnx.load(str(f32)), onnx.load(str(f8))
    assert [o.name for o in m8.graph.output] == [o.name for o in m32.graph.output]
    assert any(n.op_type == "QuantizeLinear" for n in m8.graph.node)
    with pytest.raises(bbmod.BackboneError, match="calibration"):
        bbmod.feature_graph(tiny, precision="int8")
    # An extra output added to the fp32 graph (a new feature) is carried into int8.
    extra = onnx.load(str(f32))
    extra.graph.output.append(helper.make_tensor_value_info("mai.layer0.cls", TensorProto.FLOAT, ["N", 12]))
    q = Q.quantize(extra, Q.Calibration.load(cal))
    assert "mai.layer0.cls" in [o.name for o in q.graph.output]
    x = np.random.default_rng(5).integers(0, 256, (6, stand_in.SIDE, stand_in.SIDE, 3), dtype=np.uint8)
    sess = stand_in.cpu_session(f8)
    m8 = onnx.load(str(f8))
    for out in bbmod.FEATURES:
        together = sess.run([out], {"image": x})[0]
        alone = np.concatenate([sess.run([out], {"image": x[i:i + 1]})[0] for i in range(len(x))])
        np.testing.assert_array_equal(alone, together)
        # Closeness is the scheme's, measured unfused: fused, the integer kernels' results
        # depend on the CPU (benchmarks/README.md), which this test is not about.
        (scheme,) = _run(m8, x, [out], fused=False)
        want = stand_in.cpu_session(f32).run([out], {"image": x})[0]
        np.testing.assert_allclose(scheme, want, atol=0.05 * max(1.0, float(np.abs(want).max())))


def test_precision_rule_int8_on_cpus_with_int8_dot_products(monkeypatch) -> None:
    monkeypatch.setattr(Q, "cpu_has_fast_int8", lambda: True)
    assert precisions_for("cpu") == ("int8", "fp32", "fp16") and precisions_for("cuda")[0] == "fp16"
    assert precisions_for("cpu", "fp32") == ("fp32", "int8", "fp16")
    monkeypatch.setattr(Q, "cpu_has_fast_int8", lambda: False)
    assert precisions_for("cpu") == ("fp32", "int8", "fp16")
    assert precisions_for("cuda", "int8")[0] == "int8"


def test_probe_runs_int8_on_the_cpu_and_precision_fp32_opts_out(probe_dir: Path, tiny, monkeypatch,
                                                                 capsys) -> None:
    from support.scan import run_cli

    x = np.random.default_rng(4).integers(0, 256, (8, stand_in.SIDE, stand_in.SIDE, 3), dtype=np.uint8)
    monkeypatch.setattr(Q, "cpu_has_fast_int8", lambda: True)
    fp32 = open_model(probe_dir, "cpu")
    assert fp32.precision == "fp32"  # no int8.json in the folder: the next precision of the rule
    _tiny_calibration(tiny, probe_dir)
    lines: list[str] = []
    int8 = open_model(probe_dir, "cpu", log=lines.append)
    assert int8.precision == "int8" and "backbone tiny-clip int8" in int8.describe()
    assert any("building the int8 graph" in ln for ln in lines)
    np.testing.assert_allclose(int8.predict(x)[1], fp32.predict(x)[1], atol=0.05)
    alone = np.concatenate([int8.predict(x[i:i + 1])[1] for i in range(len(x))])
    np.testing.assert_array_equal(alone, int8.predict(x)[1])
    assert open_model(probe_dir, "cpu", precision="fp32").precision == "fp32"
    monkeypatch.setattr(Q, "cpu_has_fast_int8", lambda: False)
    assert open_model(probe_dir, "cpu").precision == "fp32"  # int8 only where the CPU makes it pay
    monkeypatch.setattr(Q, "cpu_has_fast_int8", lambda: True)
    data = str(probe_dir.parent / "data" / "fake")
    args = ["--model", str(probe_dir), "--device", "cpu", "--threads", "1", "--workers", "0", "--no-state",
            "--jsonl", "-"]
    recs = {}
    for precision in ("auto", "fp32"):
        code, out, err = run_cli([data, *args, "--precision", precision], capsys)
        assert code == 0, err
        want = "int8" if precision == "auto" else "fp32"
        assert f"(backbone tiny-clip {want})" in err
        recs[precision] = {r["path"]: r for r in map(json.loads, out.splitlines())}
    assert recs["auto"].keys() == recs["fp32"].keys() and len(recs["auto"]) == 16
    # A broken calibration file: the int8 graph cannot be built, said in one line, fp32 runs.
    (probe_dir / INT8_CALIBRATION).write_text("{}")
    code, out, err = run_cli([data, *args], capsys)
    assert code == 0 and "the int8 graph of tiny-clip cannot be built" in err and "(backbone tiny-clip fp32)" in err
