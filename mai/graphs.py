"""ONNX graph rewrites MAI does once per machine, and the cache they are written to.

- `to_fp16`: an fp32 graph -> fp16 for CUDA. Weights, activations and arithmetic
  in half precision; inputs and outputs keep their types (uint8 images in, fp32
  scores out). Layer norms are fused into `LayerNormalization` with fp32
  statistics (`stash_type=1`): a mean of squares in fp16 overflows above 256.
- `quantize_weights` / `dequantize`: the int8 form a shipped CNN is stored in
  (`model.int8.onnx`, a quarter of fp32). Large matrix weights become int8 with one
  scale per output row behind a `DequantizeLinear`; the file runs as it is, but
  MAI never does: `expand` folds the weights back to fp32 (for the CPU) or fp16
  (for CUDA) once per machine, into `$MAI_HOME/models/`.
- `save_atomic`: written under a temporary name and renamed, so a cut build leaves
  nothing half-written that a later run would take for a finished cache.

Needs the `onnx` package (a core dependency), imported lazily.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mai.appdir import app_dir
from mai.artifact import sha256_file
from mai.errors import MaiError

#: The fp16 conversion's version: part of every fp16 cache name, so a change here
#: rebuilds fp16 graphs without touching fp32 ones (whose version keys feature caches).
FP16_VERSION = 1
#: A weight of at least this many elements is stored int8 by `quantize_weights`.
INT8_MIN_SIZE = 1 << 16
COMPACT_SUFFIX = ".int8.onnx"  # the stored form: `expand`ed before it runs
LAYER_NORM_OPSET = 17  # LayerNormalization's first opset


class GraphError(MaiError):
    """A graph MAI cannot rewrite; the message says which and why."""


def save_atomic(model: Any, out: Path) -> Path:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


# ----------------------------------------------------------------------------- fp16

def _const_value(name: str, inits: dict[str, Any], consts: dict[str, Any]) -> Any:
    """The numpy value of an initializer or a Constant node's output, else None."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    return consts.get(name)


def _axes(node: Any, inits: dict[str, Any], consts: dict[str, Any]) -> list[int] | None:
    """ReduceMean's axes (an attribute before opset 18, an input after)."""
    attr = {a.name: a for a in node.attribute}
    if "keepdims" in attr and attr["keepdims"].i == 0:
        return None
    if len(node.input) > 1:
        v = _const_value(node.input[1], inits, consts)
        return None if v is None else [int(a) for a in v.ravel()]
    return list(attr["axes"].ints) if "axes" in attr else None


def _fuse_layer_norms(graph: Any) -> int:
    """Replace each layer norm as exporters spell it at opsets < 17,
    ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Mul(scale) -> Add(bias),
    over the last axis, with one LayerNormalization(stash_type=1). Returns how many."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def sole(tensor: str, op: str) -> Any:
        got = users.get(tensor, [])
        return got[0] if len(got) == 1 and got[0].op_type == op else None

    def other(node: Any, tensor: str) -> str:
        rest = [i for i in node.input if i != tensor]
        return rest[0] if len(rest) == 1 else ""

    replace: dict[int, Any] = {}  # id(last node of a pattern) -> its LayerNormalization
    dropped: set[int] = set()
    for r1 in graph.node:
        if r1.op_type != "ReduceMean" or _axes(r1, inits, consts) != [-1]:
            continue
        x = r1.input[0]
        sub = sole(r1.output[0], "Sub")
        if sub is None or list(sub.input) != [x, r1.output[0]]:
            continue
        d = sub.output[0]
        by_op = {n.op_type: n for n in users.get(d, [])}
        if len(users.get(d, [])) != 2 or set(by_op) != {"Pow", "Div"}:
            continue
        power = _const_value(by_op["Pow"].input[1], inits, consts)
        if power is None or power.size != 1 or float(power) != 2.0:
            continue
        r2 = sole(by_op["Pow"].output[0], "ReduceMean")
        if r2 is None or _axes(r2, inits, consts) != [-1]:
            continue
        add = sole(r2.output[0], "Add")
        eps = None if add is None else _const_value(other(add, r2.output[0]), inits, consts)
        sqrt = None if add is None else sole(add.output[0], "Sqrt")
        div = by_op["Div"]
        if eps is None or eps.size != 1 or sqrt is None or list(div.input) != [d, sqrt.output[0]]:
            continue
        mul = sole(div.output[0], "Mul")
        bias_add = None if mul is None else sole(mul.output[0], "Add")
        if bias_add is None:
            continue
        scale, bias = other(mul, div.output[0]), other(bias_add, mul.output[0])
        if not scale or not bias:
            continue
        pattern = (r1, sub, by_op["Pow"], r2, add, sqrt, div, mul, bias_add)
        replace[id(bias_add)] = helper.make_node(
            "LayerNormalization", [x, scale, bias], [bias_add.output[0]], name=f"{bias_add.name or d}.ln",
            axis=-1, epsilon=float(eps), stash_type=1)
        dropped.update(id(n) for n in pattern[:-1])
    if not replace:
        return 0
    nodes = [replace.get(id(n), n) for n in graph.node if id(n) not in dropped]
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]  # eps and 2.0, now unused
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replace)


def to_fp16(model: Any) -> Any:
    """An fp16 copy of an fp32 graph (see the module's docstring). Raises GraphError
    when the result does not type-check."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if _fuse_layer_norms(g):
        for op in m.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < LAYER_NORM_OPSET:
                op.version = LAYER_NORM_OPSET  # the ops in between only widened their types

    FLOAT = TensorProto.FLOAT

    def half(t: Any) -> Any:
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)

    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(half(t))
    for n in g.node:
        for a in n.attribute:
            if n.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == FLOAT:
                a.t.CopyFrom(half(a.t))
            elif n.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                raise GraphError(f"to_fp16: Constant {n.name!r} uses {a.name}; not supported")
            elif n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    # Float inputs and outputs keep fp32: a Cast behind each input, one before each output.
    head, tail = [], []
    for inp in g.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            for n in g.node:
                n.input[:] = [f"{inp.name}.fp16" if i == inp.name else i for i in n.input]
            head.append(helper.make_node("Cast", [inp.name], [f"{inp.name}.fp16"], to=TensorProto.FLOAT16))
    for out in g.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            for n in g.node:
                n.input[:] = [f"{out.name}.fp16" if i == out.name else i for i in n.input]
                n.output[:] = [f"{out.name}.fp16" if o == out.name else o for o in n.output]
            tail.append(helper.make_node("Cast", [f"{out.name}.fp16"], [out.name], to=TensorProto.FLOAT))
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # fp32 types recorded by earlier inference; ONNX Runtime infers its own
    try:
        onnx.checker.check_model(m)
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types
        raise GraphError(f"to_fp16: the fp16 graph does not type-check: {str(e).strip().splitlines()[0]}") from e
    return m


# ----------------------------------------------------------------------------- int8 storage

def _weight_axis(node: Any, name: str) -> int | None:
    """The output-channel axis of `name` as `node`'s weight, or None if it is not one:
    MatMul's second input (K, N) -> 1; Gemm's B -> 0 when transposed (N, K), else 1."""
    if node.op_type == "MatMul" and list(node.input[1:2]) == [name]:
        return 1
    if node.op_type == "Gemm" and list(node.input[1:2]) == [name]:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return None


def quantize_weights(model: Any, min_size: int = INT8_MIN_SIZE) -> Any:
    """Store each 2-D float weight of `min_size` elements or more that one MatMul or
    Gemm reads as int8 in [-127, 127] with one fp32 scale per output channel (the
    largest |w| of the channel / 127), dequantized in the graph."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    keep, added, dq = [], [], []
    for t in g.initializer:
        readers = users.get(t.name, [])
        axis = _weight_axis(readers[0], t.name) if len(readers) == 1 else None
        if t.data_type != TensorProto.FLOAT or len(t.dims) != 2 or np.prod(t.dims) < min_size or axis is None:
            keep.append(t)
            continue
        w = numpy_helper.to_array(t).astype(np.float32)
        scale = np.abs(w).max(axis=1 - axis) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / np.expand_dims(scale, 1 - axis)), -127, 127).astype(np.int8)
        added += [numpy_helper.from_array(q, f"{t.name}.int8"),
                  numpy_helper.from_array(scale.astype(np.float32), f"{t.name}.scale"),
                  numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{t.name}.zero")]
        dq.append(helper.make_node("DequantizeLinear", [f"{t.name}.int8", f"{t.name}.scale", f"{t.name}.zero"],
                                   [t.name], name=f"{t.name}.dequantize", axis=axis))
    if not dq:
        raise GraphError(f"quantize_weights: no MatMul/Gemm weight of {min_size} elements or more")
    del g.initializer[:]
    g.initializer.extend(keep + added)
    nodes = dq + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def dequantize(model: Any) -> Any:
    """The inverse of `quantize_weights`: each DequantizeLinear of an int8
    initializer becomes the fp32 initializer it computes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    nodes, folded = [], []
    for n in g.node:
        if n.op_type != "DequantizeLinear" or not all(i in inits for i in n.input if i):
            nodes.append(n)
            continue
        q = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        zero = (numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
                if len(n.input) > 2 and n.input[2] else np.zeros_like(scale))
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and q.ndim > 1:  # per-axis: broadcast along `axis`
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        folded.append(numpy_helper.from_array((q - zero) * scale, n.output[0]))
    used = {i for n in nodes for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept + folded)
    onnx.checker.check_model(m)
    return m


def is_compact(path: Path) -> bool:
    return path.name.endswith(COMPACT_SUFFIX)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def expand(src: Path, precision: str, log: Callable[[str], None] | None = None) -> Path:
    """The fp32 or fp16 graph of a stored int8 model file, built on first use and
    cached under the file's SHA-256 (so an updated model builds anew)."""
    if precision not in ("fp32", "fp16"):
        raise GraphError(f"expand: unknown precision {precision!r}")
    st = src.stat()
    digest = _sha256(str(src), st.st_size, st.st_mtime_ns)
    version = f"fp16v{FP16_VERSION}" if precision == "fp16" else "fp32"
    out = app_dir() / "models" / f"{src.parent.name}-{digest[:12]}.{version}.onnx"
    if out.is_file():
        return out
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise GraphError(f"{src} is stored as int8 and is expanded once with the onnx package: "
                         "pip install onnx") from None
    if log is not None:
        log(f"model: expanding {src.name} into its {precision} graph once, in {out.parent}")
    m = dequantize(onnx.load(str(src)))
    if precision == "fp16":
        m = to_fp16(m)
    meta = {p.key: p.value for p in m.metadata_props}
    meta.update({"mai.precision": precision, "mai.expanded_from": f"{src.name} sha256:{digest}"})
    helper.set_model_props(m, meta)
    return save_atomic(m, out)
