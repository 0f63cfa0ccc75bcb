"""`mai.backbone.class_token_only`: the last block computed for token 0 gives token 0's
numbers, in the fp32, int8 and fp16 graphs, on a generated pre-norm attention block
laid out (node names, Shape/Gather/Concat reshapes) as Hugging Face's CLIP export is."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mai import backbone as bbmod  # noqa: E402
from mai import quantize as Q  # noqa: E402
from mai.graphs import to_fp16  # noqa: E402

D, T, H = 32, 9, 4  # width, tokens, heads
P = "/vision_model/encoder/layers.1"


def _norm(x: str, name: str, rng: np.random.Generator, inits: list) -> tuple[list, str]:
    inits += [numpy_helper.from_array(np.ones(D, np.float32), f"{name}.one"),
              numpy_helper.from_array(rng.uniform(0.5, 1.5, D).astype(np.float32), f"{name}.gamma"),
              numpy_helper.from_array((rng.standard_normal(D) * 0.1).astype(np.float32), f"{name}.beta")]
    return [helper.make_node("LayerNormalization", [x, f"{name}.one"], [f"{name}.n"], axis=-1, epsilon=1e-5),
            helper.make_node("Mul", [f"{name}.n", f"{name}.gamma"], [f"{name}.g"]),
            helper.make_node("Add", [f"{name}.g", f"{name}.beta"], [f"{name}.out"])], f"{name}.out"


def _linear(x: str, name: str, k: int, n: int, rng: np.random.Generator, inits: list) -> tuple[list, str]:
    inits += [numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), f"{name}.w"),
              numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), f"{name}.b")]
    return [helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"], name=f"{name}/MatMul"),
            helper.make_node("Add", [f"{name}.b", f"{name}.mm"], [f"{name}.out"])], f"{name}.out"


def _block() -> onnx.ModelProto:
    """image uint8 (N, T, D, 1) -> `blockin` -> one pre-norm ViT block -> `blockout` (N, T, D)."""
    rng = np.random.default_rng(0)
    c = {"shape": [0, T, D], "i0": 0, "i1": 1, "i2": 2, "ax0": [0], "m1": [-1], "h": [H], "dh": [D // H],
         "scale": np.float32((D // H) ** -0.25), "div": np.float32(1 / 64), "gelu": np.float32(1.702)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32 if isinstance(v, np.floating) else np.int64), k)
             for k, v in c.items()]
    a = f"{P}/self_attn"
    nodes = [helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["xf", "shape"], ["x0"]),
             helper.make_node("Mul", ["x0", "div"], ["blockin"])]
    ln1, n1 = _norm("blockin", f"{P}/layer_norm1", rng, inits)
    nodes += ln1
    # The export's shape arithmetic: batch, tokens and width read from the normed input.
    for k, idx in (("", "i0"), ("_1", "i1"), ("_2", "i2")):
        nodes += [helper.make_node("Shape", [n1], [f"{a}/Shape{k}.out"], name=f"{a}/Shape{k}"),
                  helper.make_node("Gather", [f"{a}/Shape{k}.out", idx], [f"{a}/dim{k}"], axis=0),
                  helper.make_node("Unsqueeze", [f"{a}/dim{k}", "ax0"], [f"{a}/dim{k}.1"])]
    nodes.append(helper.make_node("Concat", [f"{a}/dim.1", "m1", "h", "dh"], ["heads"], axis=0))
    nodes.append(helper.make_node("Concat", [f"{a}/dim.1", f"{a}/dim_1.1", f"{a}/dim_2.1"], ["merged"], axis=0))
    qkv = {}
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        lin, out = _linear(n1, f"{a}/{name}_proj", D, D, rng, inits)
        nodes += lin + [helper.make_node("Reshape", [out, "heads"], [f"{name}.r"]),
                        helper.make_node("Transpose", [f"{name}.r"], [f"{name}.t"], perm=perm),
                        helper.make_node("Mul", [f"{name}.t", "scale"], [f"{name}.s"])]
        qkv[name] = f"{name}.s"
    nodes += [helper.make_node("MatMul", [qkv["q"], qkv["k"]], ["att"]),
              helper.make_node("Softmax", ["att"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v.t"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx.t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx.t", "merged"], ["ctx.m"])]
    lin, att_out = _linear("ctx.m", f"{a}/out_proj", D, D, rng, inits)
    nodes += lin + [helper.make_node("Add", ["blockin", att_out], ["h1"], name=f"{P}/Add")]
    ln2, n2 = _norm("h1", f"{P}/layer_norm2", rng, inits)
    nodes += ln2
    fc1, f1 = _linear(n2, f"{P}/mlp/fc1", D, 4 * D, rng, inits)
    nodes += fc1 + [helper.make_node("Mul", [f1, "gelu"], ["gc"]), helper.make_node("Sigmoid", ["gc"], ["gs"]),
                    helper.make_node("Mul", [f1, "gs"], ["act"])]
    fc2, f2 = _linear("act", f"{P}/mlp/fc2", 4 * D, D, rng, inits)
    nodes += fc2 + [helper.make_node("Add", ["h1", f2], ["blockout"], name=f"{P}/Add_1")]
    graph = helper.make_graph(nodes, "hf-block", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                                ["N", T, D, 1])],
                              [helper.make_tensor_value_info("blockout", TensorProto.FLOAT, ["N", None, D])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


BB = bbmod.Backbone(name="hf-block", package="-", version="-", file="-", sha256="-", input="image", size=T,
                    mean=(0, 0, 0), std=(1, 1, 1), outputs=(), blocks=("blockin", "blockout"), dims=(),
                    licence="test", last_block=P)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["blockout"], {"image": x})[0]


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, T, D, 1), dtype=np.uint8)


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


def test_fp32_token0_is_unchanged_and_the_rest_is_not_computed() -> None:
    full, x = _block(), _images(5, 1)
    pruned = bbmod.class_token_only(_copy(full), BB)
    onnx.checker.check_model(pruned)
    want, got = _run(full, x), _run(pruned, x)
    assert got.shape == (5, 1, D) and want.shape == (5, T, D)
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-5, atol=1e-5)
    assert sum(n.op_type == "Slice" for n in pruned.graph.node) == 2


def test_int8_graph_quantized_first_then_pruned_keeps_token0() -> None:
    full = _block()
    cal = Q.calibration(full, Q.collect(full, (_images(8, s) for s in range(4))), "p99.99", 0.8)
    q8 = Q.quantize(full, cal)
    pruned = bbmod.class_token_only(Q.quantize(full, cal), BB)
    x = _images(6, 2)
    np.testing.assert_allclose(_run(pruned, x)[:, 0], _run(q8, x)[:, 0], rtol=1e-5, atol=1e-5)
    one = _run(pruned, x[2:3])  # batch-invariant, as every MAI graph
    np.testing.assert_array_equal(one[0], _run(pruned, x)[2])


def test_fp16_graph_of_the_pruned_one_runs_and_stays_close() -> None:
    full, x = _block(), _images(4, 3)
    half = to_fp16(bbmod.class_token_only(_copy(full), BB))
    np.testing.assert_allclose(_run(half, x)[:, 0], _run(full, x)[:, 0], rtol=2e-2, atol=2e-2)


def test_a_graph_without_the_named_block_is_one_clear_error_and_no_prefix_is_a_no_op() -> None:
    import dataclasses

    full = _block()
    with pytest.raises(bbmod.BackboneError, match="last block MAI expects"):
        bbmod.class_token_only(_copy(full), dataclasses.replace(BB, last_block="/vision_model/encoder/layers.7"))
    same = bbmod.class_token_only(_copy(full), dataclasses.replace(BB, last_block=""))
    assert same.SerializeToString() == full.SerializeToString()
