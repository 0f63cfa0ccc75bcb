"""Static int8 quantization of a feature graph, from calibration ranges shipped with a model.

ONNX Runtime's dynamic quantization picks each activation's scale from the batch
in hand, so a file's features would depend on its batch mates; MAI never does
that. Here every scale is a constant, fixed once from calibration images, so the
int8 graph is batch-invariant by construction (tested).

- `weight_matmuls`: the matrix products with a constant 2-D weight (the ones worth
  int8 arithmetic), keyed by the activation tensor they read.
- `collect`: calibration statistics of those activations over batches of images
  (per-channel |max| for smoothing, global min/max, and a sample for percentiles).
- `smooth`: SmoothQuant's scale migration (Xiao et al., ICML 2023): an activation
  that a layer norm's affine step writes is divided per channel by `s` (folded into
  the norm's scale and bias) and the weight rows that read it are multiplied by
  `s`, so outlier channels move into the weights, which quantize per channel.
- `quantize`: a QDQ graph: each listed activation gets one QuantizeLinear with its
  static scale (symmetric int8, zero point 0, or asymmetric uint8) and a
  DequantizeLinear per reader; each weight becomes int8 per output channel behind a
  DequantizeLinear. ONNX Runtime fuses DQ -> MatMul into integer kernels
  (MatMulIntegerToFloat). Everything else (layer norms, softmax, GELU, attention's
  activation-by-activation products, the patch embedding and every op not listed)
  stays fp32; the graph's inputs and outputs are untouched, so an int8 graph keeps
  every output of the fp32 graph it is made from.

The calibration file (`Calibration`, JSON) holds the smoothing factors and the
ranges; `mai calibrate-int8` (the training wing) writes it from training images.
Needs numpy and onnx only.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mai.graphs import GraphError

#: The int8 build's version: part of every int8 cache name.
INT8_VERSION = 1
SCHEMA = "mai.int8-calibration/1"


@dataclass
class Calibration:
    """Static ranges for a feature graph: `ranges[tensor] = (lo, hi)` after smoothing,
    `smooth[tensor]` = per-channel divisors (SmoothQuant), `symmetric` int8 or uint8."""

    ranges: dict[str, tuple[float, float]]
    smooth: dict[str, list[float]] = field(default_factory=dict)
    symmetric: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    unsigned: list[str] = field(default_factory=list)  # these take asymmetric uint8 even when `symmetric`

    def to_json(self) -> str:
        """Ranges as decimals; smoothing divisors as base64 float16 (little-endian), which
        is what they are: `calibration` rounds them to float16 before it measures ranges."""
        return json.dumps({"schema": SCHEMA, "symmetric": self.symmetric, "info": self.info,
                           "unsigned": sorted(self.unsigned),
                           "ranges": {k: [float(f"{lo:.7g}"), float(f"{hi:.7g}")]
                                      for k, (lo, hi) in self.ranges.items()},
                           "smooth_f16": {k: base64.b64encode(np.asarray(s, "<f2").tobytes()).decode("ascii")
                                          for k, s in self.smooth.items()}},
                          indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            d = json.loads(Path(path).read_text())
            if d.get("schema") != SCHEMA:
                raise ValueError(f"schema {d.get('schema')!r}, expected {SCHEMA}")
            return cls({k: (float(v[0]), float(v[1])) for k, v in d["ranges"].items()},
                       {k: np.frombuffer(base64.b64decode(v), "<f2").astype(np.float32).tolist()
                        for k, v in d.get("smooth_f16", {}).items()},
                       bool(d.get("symmetric", True)), dict(d.get("info", {})),
                       [str(t) for t in d.get("unsigned", [])])
        except (OSError, ValueError, KeyError, TypeError, IndexError, binascii.Error) as e:
            raise GraphError(f"{path}: not an int8 calibration file ({e})") from e


def _users(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def weight_matmuls(model: Any) -> dict[str, list[Any]]:
    """activation tensor -> the MatMul nodes that multiply it by a constant 2-D
    float weight (each weight read by that node only), in graph order."""
    from onnx import TensorProto

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users = _users(g)
    out: dict[str, list[Any]] = {}
    for n in g.node:
        if n.op_type != "MatMul" or len(n.input) != 2:
            continue
        w = inits.get(n.input[1])
        if w is None or w.data_type != TensorProto.FLOAT or len(w.dims) != 2 or len(users[w.name]) != 1:
            continue
        if n.input[0] in inits:
            continue
        out.setdefault(n.input[0], []).append(n)
    return out


# ----------------------------------------------------------------------------- calibration statistics

class Stats:
    """Running statistics of named activations: per-channel |max|, min and max
    (last axis), min, max, and a seeded sample of values for percentiles."""

    def __init__(self, per_batch_sample: int = 4096, seed: int = 0) -> None:
        self.chmax: dict[str, np.ndarray] = {}
        self.chlo: dict[str, np.ndarray] = {}
        self.chhi: dict[str, np.ndarray] = {}
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.sample: dict[str, list[np.ndarray]] = {}
        self.k = per_batch_sample
        self.rng = np.random.default_rng(seed)

    def add(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        rows = x.reshape(-1, x.shape[-1])
        lo, hi = rows.min(axis=0), rows.max(axis=0)
        self.chlo[name] = np.minimum(self.chlo[name], lo) if name in self.chlo else lo
        self.chhi[name] = np.maximum(self.chhi[name], hi) if name in self.chhi else hi
        self.chmax[name] = np.maximum(-self.chlo[name], self.chhi[name])
        self.lo[name] = min(self.lo.get(name, np.inf), float(x.min()))
        self.hi[name] = max(self.hi.get(name, -np.inf), float(x.max()))
        flat = x.ravel()
        self.sample.setdefault(name, []).append(flat[self.rng.integers(0, flat.size, self.k)])

    def range(self, name: str, method: str, symmetric: bool) -> tuple[float, float]:
        """(lo, hi) by `method`: minmax, or pNN.NN (a percentile of |x| when
        symmetric, of each tail otherwise), capped by the true min and max."""
        lo, hi = self.lo[name], self.hi[name]
        if method == "minmax":
            return (-max(-lo, hi), max(-lo, hi)) if symmetric else (min(lo, 0.0), max(hi, 0.0))
        if not method.startswith("p"):
            raise ValueError(f"unknown range method {method!r}")
        q = float(method[1:])
        s = np.concatenate(self.sample[name])
        if symmetric:
            a = min(float(np.percentile(np.abs(s), q)), max(-lo, hi))
            return -a, a
        return (min(max(float(np.percentile(s, 100 - q)), lo), 0.0), max(min(float(np.percentile(s, q)), hi), 0.0))


def smoothing_factors(chmax_x: np.ndarray, w_rows_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_j|^(1-alpha), clipped to [1e-2, 1e3]."""
    s = np.power(np.maximum(chmax_x, 1e-5), alpha) / np.power(np.maximum(w_rows_max, 1e-5), 1 - alpha)
    return np.clip(s, 1e-2, 1e3).astype(np.float32)


def smoothable(model: Any) -> dict[str, tuple[str, ...]]:
    """activation -> where its per-channel divisors can be folded, for activations
    every reader of which is a weight MatMul (or a Shape, which smoothing leaves alone):
    ("norm", scale, bias) when a layer norm's affine step writes it (Mul by a 1-D
    constant, then Add a 1-D constant); ("gelu", weight, bias, constant, mul) when it
    is a sigmoid GELU, h * sigmoid(c * h) with h = MatMul(., weight) + bias: then
    x / s = (h / s) * sigmoid((c s) (h / s)), so the divisors go into the weight's
    columns and the bias and `c` becomes the vector c * s, with no extra op."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0] for n in g.node if n.op_type == "Constant"}
    producer = {o: n for n in g.node for o in n.output}
    users = _users(g)
    mm = weight_matmuls(model)
    mm_nodes = {id(n) for ns in mm.values() for n in ns}

    def only(t: str) -> bool:
        return len(users.get(t, [])) == 1

    def vector(t: str | None) -> bool:
        return t is not None and t in inits and len(inits[t].dims) == 1 and only(t)

    out: dict[str, tuple[str, ...]] = {}
    for x, readers in mm.items():
        if len([u for u in users.get(x, []) if u.op_type != "Shape"]) != len(readers):
            continue
        last = producer.get(x)
        if last is not None and last.op_type == "Add":
            bias = next((i for i in last.input if vector(i)), None)
            mul = next((producer.get(i) for i in last.input if i != bias), None)
            if bias and mul is not None and mul.op_type == "Mul" and only(mul.output[0]):
                scale = next((i for i in mul.input if vector(i)), None)
                if scale:
                    out[x] = ("norm", scale, bias)
            continue
        if last is None or last.op_type != "Mul":
            continue
        sig = next((producer.get(i) for i in last.input if producer.get(i) is not None
                    and producer[i].op_type == "Sigmoid"), None)
        if sig is None or not only(sig.output[0]):
            continue
        h = next((i for i in last.input if i != sig.output[0]), None)
        inner = producer.get(sig.input[0])
        if h is None or inner is None or inner.op_type != "Mul" or h not in inner.input or not only(inner.output[0]):
            continue
        c = next((i for i in inner.input if i != h), None)
        add = producer.get(h)
        if c is None or (c not in inits and c not in consts) or add is None or add.op_type != "Add":
            continue
        if len(users.get(h, [])) != 2 or not only(c):
            continue
        bias = next((i for i in add.input if vector(i)), None)
        fc = next((producer.get(i) for i in add.input if i != bias), None)
        if bias is None or fc is None or id(fc) not in mm_nodes or not only(fc.output[0]):
            continue
        out[x] = ("gelu", fc.input[1], bias, c, inner.output[0])
    return out


def smooth(model: Any, factors: dict[str, Any]) -> Any:
    """A copy of `model` with each activation in `factors` divided by its per-channel
    factors where `smoothable` says, and its readers' weight rows multiplied by them."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    where = smoothable(m)
    mm = weight_matmuls(m)
    idx = {t.name: k for k, t in enumerate(g.initializer)}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def update(name: str, fn: Any) -> None:
        t = g.initializer[idx[name]]
        t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)).astype(np.float32), name))

    for x, s in factors.items():
        if x not in where:
            raise GraphError(f"smooth: the divisors of {x!r} cannot be folded into this graph "
                             "(not a layer norm's or a sigmoid GELU's output read by weight products only)")
        s = np.asarray(s, np.float32)
        kind, *names = where[x]
        if kind == "norm":
            scale, bias = names
            update(scale, lambda a, s=s: a / s)
            update(bias, lambda a, s=s: a / s)
        else:
            weight, bias, c, mul_out = names
            update(weight, lambda w, s=s: w / s[None, :])
            update(bias, lambda a, s=s: a / s)
            cv = numpy_helper.to_array(g.initializer[idx[c]] if c in idx else consts[c].attribute[0].t)
            name = f"{c}.smoothed"
            g.initializer.append(numpy_helper.from_array((cv.astype(np.float32) * s).astype(np.float32), name))
            idx[name] = len(g.initializer) - 1
            mul = next(n for n in g.node if list(n.output) == [mul_out])
            mul.input[:] = [name if i == c else i for i in mul.input]
        for n in mm[x]:
            update(n.input[1], lambda w, s=s: w * s[:, None])
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [n for n in g.node if n.op_type != "Constant" or n.output[0] in used]  # GELU constants now vectors
    if len(kept) != len(g.node):
        del g.node[:]
        g.node.extend(kept)
    return m


# ----------------------------------------------------------------------------- QDQ graph

def _weight_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column (axis 1 of a (K, N) MatMul weight). A weight
    that already lies on an int8 grid (a graph dequantized from int8) keeps that grid
    exactly: its step is the smallest nonzero |w| of the column."""
    a = np.abs(w)
    scale = a.max(axis=0) / 127.0
    nz = np.where(a > 0, a, np.inf).min(axis=0)
    k = w / np.where(np.isfinite(nz), nz, 1.0)[None, :]
    on_grid = np.isfinite(nz) & (np.abs(k - np.rint(k)).max(axis=0) < 1e-3) & (np.abs(k).max(axis=0) <= 127.5)
    scale = np.where(on_grid, nz, scale)
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale[None, :]), -128, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def quantize(model: Any, cal: Calibration) -> Any:
    """The static QDQ int8 graph of an fp32 `model` (see the module's docstring).
    Raises GraphError when a calibrated tensor is missing from the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = smooth(model, cal.smooth) if cal.smooth else _copy(model)
    g = m.graph
    mm = weight_matmuls(m)
    missing = [t for t in cal.ranges if t not in mm]
    if missing:
        raise GraphError(f"quantize: {len(missing)} calibrated tensors are not weight-product inputs of this graph "
                         f"(first: {missing[0]!r}); the calibration file is for another graph")
    inits = {t.name: t for t in g.initializer}
    new_inits, before = [], {}  # before: id(node) -> nodes inserted ahead of it
    dropped_w: set[str] = set()
    unsigned = set(cal.unsigned)
    for x, (lo, hi) in cal.ranges.items():
        if cal.symmetric and x not in unsigned:
            a = max(abs(lo), abs(hi), 1e-8)
            scale, zp = np.float32(a / 127.0), np.int8(0)
        else:
            lo, hi = min(lo, 0.0), max(hi, 1e-8)
            scale = np.float32((hi - lo) / 255.0)
            zp = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
        tag = f"mai.q.{x}"
        new_inits += [numpy_helper.from_array(np.asarray(scale, np.float32), f"{tag}.scale"),
                      numpy_helper.from_array(np.asarray(zp), f"{tag}.zp")]
        q = helper.make_node("QuantizeLinear", [x, f"{tag}.scale", f"{tag}.zp"], [f"{tag}.q"], name=f"{tag}.Q")
        readers = mm[x]
        for k, n in enumerate(readers):
            dq = helper.make_node("DequantizeLinear", [f"{tag}.q", f"{tag}.scale", f"{tag}.zp"], [f"{tag}.dq{k}"],
                                  name=f"{tag}.DQ{k}")
            wname = n.input[1]
            wq, ws = _weight_int8(numpy_helper.to_array(inits[wname]).astype(np.float32))
            new_inits += [numpy_helper.from_array(wq, f"{wname}.int8"),
                          numpy_helper.from_array(ws, f"{wname}.wscale"),
                          numpy_helper.from_array(np.zeros_like(ws, np.int8), f"{wname}.wzp")]
            wdq = helper.make_node("DequantizeLinear", [f"{wname}.int8", f"{wname}.wscale", f"{wname}.wzp"],
                                   [f"{wname}.dq"], name=f"{wname}.DQ", axis=1)
            before.setdefault(id(n), []).extend(([q] if k == 0 else []) + [dq, wdq])
            n.input[0], n.input[1] = f"{tag}.dq{k}", f"{wname}.dq"
            dropped_w.add(wname)
    nodes = []
    for n in g.node:
        nodes.extend(before.get(id(n), []))
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    kept = [t for t in g.initializer if t.name not in dropped_w]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    for op in m.opset_import:  # per-axis DequantizeLinear needs opset 13
        if op.domain in ("", "ai.onnx") and op.version < 13:
            op.version = 13
    del g.value_info[:]
    _ = TensorProto
    onnx.checker.check_model(m)
    return m


def _copy(model: Any) -> Any:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def cpu_has_fast_int8() -> bool:
    """Whether this CPU has integer dot-product instructions (x86 VNNI or AMX, Arm
    dot product), the ones that make ONNX Runtime's int8 kernels beat fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


# ----------------------------------------------------------------------------- calibration

def collect(model: Any, batches: Any, threads: int | None = None, stats: Stats | None = None) -> Stats:
    """Run the fp32 `model` (an onnx ModelProto) over `batches` of its `image` input
    and gather `Stats` of every weight product's activation input."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = _copy(model)
    names = list(weight_matmuls(m))
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names if t not in have)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    st = stats or Stats()
    for x in batches:
        for name, v in zip(names, sess.run(names, {"image": x}), strict=True):
            st.add(name, v)
    return st


def calibration(model: Any, st: Stats, method: str = "p99.99", alpha: float = 0.8, symmetric: bool = False,
                info: dict[str, Any] | None = None, keep_fp32: tuple[str, ...] = ()) -> Calibration:
    """Ranges (and SmoothQuant divisors, with migration strength `alpha`, where they
    fold into the graph) for every weight product of `model` but the last one (the
    last layer stays fp32) and those reading an activation of a kind in `keep_fp32`
    ("gelu": the MLPs' second products, whose heavy-tailed input costs the most).
    Smoothed activations take the range of their smoothed per-channel extremes; the
    others `method` (minmax or a percentile, pNN.NN)."""
    from onnx import numpy_helper

    mm = weight_matmuls(model)
    inits = {t.name: t for t in model.graph.initializer}
    order = list(mm)
    if not order:
        raise GraphError("calibration: the graph has no weight products to quantize")
    where = smoothable(model)
    ranges: dict[str, tuple[float, float]] = {}
    smooth_f: dict[str, list[float]] = {}
    kept = [x for x in order[:-1] if x in where and where[x][0] in keep_fp32]
    for x in order[:-1]:
        if x in kept:
            continue
        if x in where and alpha > 0:
            wmax = np.max([np.abs(numpy_helper.to_array(inits[n.input[1]])).max(axis=1) for n in mm[x]], axis=0)
            s = smoothing_factors(st.chmax[x], wmax, alpha).astype(np.float16).astype(np.float32)  # as stored
            smooth_f[x] = s.tolist()
            if symmetric:
                a = float((st.chmax[x] / s).max())
                ranges[x] = (-a, a)
            else:  # e.g. a GELU's output: a long positive tail, hardly anything below zero
                ranges[x] = (min(float((st.chlo[x] / s).min()), 0.0), max(float((st.chhi[x] / s).max()), 0.0))
        else:
            ranges[x] = st.range(x, method, symmetric)
    meta = {"method": method, "alpha": alpha, "fp32": [*kept, order[-1]], **(info or {})}
    return Calibration(ranges, smooth_f, symmetric, meta)
