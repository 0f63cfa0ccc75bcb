"""A probe's head as ONNX: `features: float32[N, D]` -> `logit`, `prob` (float32[N]),
carrying the `mai.*` metadata and `mai.backbone`, which tells
`mai.session.open_model` which feature graph to run first. `export_head` writes
it and proves it against the numpy head before it is final.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.proof import ExportError, max_diff, staged
from mai.artifact import Artifact, onnx_metadata
from mai_train.probe import Head
from mai_train.train_probe import load_head

HEAD_TOLERANCE = 1e-4  # max |prob difference| between the ONNX head and the numpy head, as fp32 exports


def export_head(art: Artifact, feats: np.ndarray | None = None, out: Path | None = None) -> float:
    """Write the head as `model.fp32.onnx` and prove it against the numpy head on
    `feats` (default: random unit vectors); returns the worst |prob difference|."""
    import onnxruntime as ort

    head = load_head(art)
    if feats is None:
        width = head.in_width
        feats = np.random.default_rng(0).standard_normal((64, width)).astype(np.float32)
    final = (out or art.path) / "model.fp32.onnx"
    with staged(final) as tmp:
        head_onnx(head, onnx_metadata(art, "fp32"), tmp)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(tmp), sess_options=opts, providers=["CPUExecutionProvider"])
        got = sess.run(["prob"], {"features": np.asarray(feats, np.float32)})[0]
        worst = max_diff(got, head.prob(feats))
        if not worst <= HEAD_TOLERANCE:
            raise ExportError(f"{final.name}: head parity failed: max |prob difference| {worst:.2e} "
                              f"> {HEAD_TOLERANCE}")
    return worst


def proven_head_line(art: Artifact, feats: np.ndarray) -> str:
    """`mai train probe`'s last step (the `finish` it is handed): export, say how close."""
    return f"model.fp32.onnx: head parity max |dp| {export_head(art, feats):.1e}"


def head_onnx(head: Head, meta: dict[str, str], path: Path, in_dim: int | None = None) -> Path:
    """Write the head as ONNX (opset 17): features (`in_dim` wide) -> blocks ->
    the selected ones at unit length -> standardise -> (hidden layer) -> logit, prob (float32[N]),
    with `meta` as its metadata. Needs the onnx package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = head.arrays()
    d = a["mu"].shape[0]
    in_dim = in_dim or head.in_width
    inits = [numpy_helper.from_array(a["mu"], "mu"), numpy_helper.from_array(a["sigma"], "sigma"),
             numpy_helper.from_array(a["w"].reshape(-1, 1), "w"), numpy_helper.from_array(a["b"], "b"),
             numpy_helper.from_array(np.asarray([1e-24], np.float32), "eps"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "flat"),
             numpy_helper.from_array(np.asarray([0, head.blocks, in_dim // head.blocks], np.int64), "split"),
             numpy_helper.from_array(np.asarray(head.select, np.int64), "select"),
             numpy_helper.from_array(np.asarray([0, d], np.int64), "joined"),
             numpy_helper.from_array(np.asarray([2], np.int64), "axis2")]
    nodes = [
        helper.make_node("Reshape", ["features", "split"], ["parts_all"]),
        helper.make_node("Gather", ["parts_all", "select"], ["parts"], axis=1),
        helper.make_node("Mul", ["parts", "parts"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis2"], ["ss"], keepdims=1),
        helper.make_node("Add", ["ss", "eps"], ["ss_eps"]),
        helper.make_node("Sqrt", ["ss_eps"], ["norm"]),
        helper.make_node("Div", ["parts", "norm"], ["unit_parts"]),
        helper.make_node("Reshape", ["unit_parts", "joined"], ["unit"]),
        helper.make_node("Sub", ["unit", "mu"], ["centred"]),
        helper.make_node("Div", ["centred", "sigma"], ["z"]),
    ]
    if head.w1 is not None:  # the MLP's hidden layer, stored in half precision, computed in fp32
        inits += [numpy_helper.from_array(a["w1"], "w1_half"), numpy_helper.from_array(a["b1"], "b1")]
        nodes += [helper.make_node("Cast", ["w1_half"], ["w1"], to=TensorProto.FLOAT),
                  helper.make_node("MatMul", ["z", "w1"], ["z_w1"]),
                  helper.make_node("Add", ["z_w1", "b1"], ["pre"]),
                  helper.make_node("Relu", ["pre"], ["h"])]
    nodes += [
        helper.make_node("MatMul", ["h" if head.w1 is not None else "z", "w"], ["zw"]),
        helper.make_node("Add", ["zw", "b"], ["logit2d"]),
        helper.make_node("Reshape", ["logit2d", "flat"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "mai.probe_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", in_dim])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mai")
    model.ir_version = 8
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path
