"""Models for tests: a random MAI CNN artifact (torch) and a tiny MAI ONNX model (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_artifact(out: Path, seed: int = 0, threshold: float = 0.5, band: tuple[float, float] = (0.4, 0.6),
                  spec_dict: dict | None = None, name: str = "test-cnn") -> Path:
    """A freshly initialised MAI CNN saved as an artifact (needs torch)."""
    import torch

    from mai.preprocess import CIFAKE_SPEC
    from mai_train.checkpoint import save_artifact
    from mai_train.registry import create_model

    torch.manual_seed(seed)
    model = create_model("mai_cnn")
    meta = {
        "name": name, "architecture": {"name": "mai_cnn", "args": {}},
        "preprocess": spec_dict or CIFAKE_SPEC.to_dict(), "threshold": threshold, "uncertain": list(band),
        "calibration": {"threshold_rule": "fixed for tests"}, "metrics": {}, "data": {}, "train": {},
    }
    save_artifact(out, model, meta, name)
    return out


def tiny_onnx_model(out: Path, name: str = "test-cnn") -> Path:
    """A MAI ONNX model built with onnx.helper, no torch: the graph contract (uint8
    NHWC `image` at the CIFAKE spec's 200x200 in, `logit` and `prob` out) and the
    metadata the scanner reads. Its score follows the image's mean brightness, so
    scores vary from file to file; scan tests need a model, not a detector."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mai.artifact import ONNX_SCHEMA
    from mai.preprocess import CIFAKE_SPEC

    w, h = CIFAKE_SPEC.input_size
    inits = [numpy_helper.from_array(np.asarray([1, 2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.asarray(8.0 / 255.0, np.float32), "scale"),
             numpy_helper.from_array(np.asarray(4.0, np.float32), "shift")]
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
             helper.make_node("Sub", ["scaled", "shift"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"])]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", h, w, 3])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"]),
                               helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {"mai.schema": ONNX_SCHEMA, "mai.model_id": f"{name}@00000000", "mai.preprocess": CIFAKE_SPEC.to_json(),
            "mai.threshold": "0.5", "mai.uncertain": json.dumps([0.4, 0.6]), "mai.precision": "fp32"}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.fp32.onnx"))
    return out
