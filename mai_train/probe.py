"""Probe models: a logistic head on a frozen backbone's features (torch-free).

The literature's most data-efficient detectors are linear probes on frozen CLIP
features (UnivFD, CVPR 2023; Cozzolino et al., CVPR-W 2024). Here:

- `extract` runs a data set through the backbone's feature graph (the same graph and
  the same `mai.preprocess.prepare` the scanner uses, so training sees exactly what
  a scan sees) and keeps every feature the graph gives;
- `fit_logistic` fits an L2-regularised logistic regression by Newton's method
  (exact, a few iterations, no extra dependency) on L2-normalised, standardised
  features;
- `head_onnx` writes the head as a tiny ONNX graph, `features: float32[N, D]` ->
  `logit`, `prob`, carrying the `mai.*` metadata and `mai.backbone`, which tells
  `mai.session.open_model` which feature graph to run first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mai.preprocess import PreprocessSpec
from mai_train.data import DataSet, Item
from mai_train.evaluate import Features, map_items


def extract(session: Any, ds: DataSet, items: Sequence[Item], spec: PreprocessSpec, batch_size: int = 16,
            perturb: Callable[[Image.Image], Image.Image] | None = None,
            progress: Callable[[int], None] | None = None) -> Features:
    """Every output of a feature graph's `session` for every readable item."""
    names = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {"image": x}), strict=True))

    return map_items(run, ds, items, spec, batch_size, progress=progress, perturb=perturb)


@dataclass
class Head:
    """logit = w . ((u(x) - mu) / sigma) + b, where u(x) splits the feature into
    `blocks` equal parts (the `layers` feature: one per transformer block), keeps
    those in `select`, and scales each to unit length, so no block drowns the
    others by its norm. A one-block head is the classic `x / |x|`."""

    w: np.ndarray
    b: float
    mu: np.ndarray
    sigma: np.ndarray
    blocks: int = 1
    select: tuple[int, ...] = (0,)

    def unit(self, x: np.ndarray) -> np.ndarray:
        return unit_blocks(x, self.blocks, self.select)

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((self.unit(x) - self.mu) / self.sigma) @ self.w + self.b

    def prob(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(x)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"w": self.w.astype(np.float32), "b": np.asarray([self.b], np.float32),
                "mu": self.mu.astype(np.float32), "sigma": self.sigma.astype(np.float32),
                "blocks": np.asarray([self.blocks], np.int64), "select": np.asarray(self.select, np.int64)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Head:
        blocks = int(np.asarray(a["blocks"]).reshape(-1)[0]) if "blocks" in a else 1
        select = tuple(int(i) for i in np.asarray(a["select"]).reshape(-1)) if "select" in a else (0,)
        return cls(np.asarray(a["w"], np.float64), float(np.asarray(a["b"]).reshape(-1)[0]),
                   np.asarray(a["mu"], np.float64), np.asarray(a["sigma"], np.float64), blocks, select)


def unit_blocks(x: np.ndarray, blocks: int = 1, select: Sequence[int] = (0,)) -> np.ndarray:
    """(N, D) -> the `select`ed of `blocks` equal parts, each at unit length, side by side."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if d % blocks:
        raise ValueError(f"a {d}-d feature does not split into {blocks} blocks")
    parts = x.reshape(n, blocks, d // blocks)[:, list(select)]
    parts = parts / np.maximum(np.linalg.norm(parts, axis=2, keepdims=True), 1e-12)
    return parts.reshape(n, len(select) * (d // blocks))


#: Up to this many features the Newton step is a direct solve; above, conjugate
#: gradients on Hessian-vector products (the `layers` feature has 9,216: forming and
#: solving its Hessian takes minutes on 2 cores, a CG step under a second).
DIRECT_MAX = 2048


def _newton_cg(z: np.ndarray, curv: np.ndarray, reg: np.ndarray, grad: np.ndarray, tol: float = 1e-10,
               max_iter: int = 500) -> np.ndarray:
    """Solve (z' diag(curv) z + diag(reg)) s = grad by Jacobi-preconditioned CG."""
    def hv(v: np.ndarray) -> np.ndarray:
        return z.T @ (curv * (z @ v)) + reg * v

    pre = 1.0 / ((z * z).T @ curv + reg)
    s = np.zeros_like(grad)
    r = grad.copy()
    d = pre * r
    rz = r @ d
    stop = tol * max(float(grad @ grad), 1e-300)
    for _ in range(max_iter):
        if r @ r <= stop:
            break
        hd = hv(d)
        a = rz / (d @ hd)
        s += a * d
        r -= a * hd
        zr = pre * r
        rz, rz_old = r @ zr, rz
        d = zr + (rz / rz_old) * d
    return s


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50, blocks: int = 1,
                 select: Sequence[int] = (0,), weight: np.ndarray | None = None) -> Head:
    """L2-regularised logistic regression (penalty `l2`/2 |w|^2 on the standardised
    features, bias free), by Newton's method: the exact optimum, deterministic.
    `weight` (one per sample, default 1) balances data sets of unequal size."""
    u = unit_blocks(x, blocks, select)
    mu = u.mean(0)
    sigma = u.std(0) + 1e-6
    z = np.hstack([(u - mu) / sigma, np.ones((len(u), 1))])
    y = np.asarray(y, np.float64)
    sw = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    theta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(z @ theta)))
        grad = z.T @ (sw * (p - y)) + reg * theta
        curv = sw * p * (1 - p)
        if z.shape[1] <= DIRECT_MAX:
            hess = (z * curv[:, None]).T @ z + np.diag(reg + 1e-9)
            step = np.linalg.solve(hess, grad)
        else:
            step = _newton_cg(z, curv, reg + 1e-9, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return Head(theta[:-1], float(theta[-1]), mu, sigma, blocks, tuple(int(i) for i in select))


def head_onnx(head: Head, meta: dict[str, str], path: Path, in_dim: int | None = None) -> Path:
    """Write the head as ONNX (opset 17): features (`in_dim` wide) -> blocks ->
    the selected ones at unit length -> standardise -> logit, prob (float32[N]),
    with `meta` as its metadata. Needs the onnx package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = head.arrays()
    d = a["w"].shape[0]
    in_dim = in_dim or d * head.blocks // len(head.select)
    inits = [numpy_helper.from_array(a["mu"], "mu"), numpy_helper.from_array(a["sigma"], "sigma"),
             numpy_helper.from_array(a["w"].reshape(d, 1), "w"), numpy_helper.from_array(a["b"], "b"),
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
        helper.make_node("MatMul", ["z", "w"], ["zw"]),
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
