"""Probe models: a logistic head on a frozen backbone's features (torch-free).

The literature's most data-efficient detectors are linear probes on frozen CLIP
features (UnivFD, CVPR 2023; Cozzolino et al., CVPR-W 2024). Here:

- `extract` runs a data set through the backbone's feature graph (the same graph and
  the same `mai.preprocess.prepare` the scanner uses, so training sees exactly what
  a scan sees) and keeps every feature the graph gives;
- `fit_logistic` fits an L2-regularised logistic regression by Newton's method
  (exact, a few iterations, no extra dependency) on L2-normalised, standardised
  features;
- the head's ONNX form (`features: float32[N, D]` -> `logit`, `prob`) is written
  and proven by `export.probe_head`, the export package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mai.errors import MaiError
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
    """logit = w . h(z) + b, z = (u(x) - mu) / sigma, where u(x) splits the feature
    into `blocks` equal parts (the `layers` feature: one per transformer block),
    keeps those in `select`, and scales each to unit length, so no block drowns the
    others by its norm (a one-block head is the classic `x / |x|`). h is the
    identity (a linear probe) or, with `w1`, one hidden ReLU layer
    h(z) = max(z w1 + b1, 0) (an MLP probe)."""

    w: np.ndarray
    b: float
    mu: np.ndarray
    sigma: np.ndarray
    blocks: int = 1
    select: tuple[int, ...] = (0,)
    w1: np.ndarray | None = None  # (features, hidden)
    b1: np.ndarray | None = None  # (hidden,)

    @property
    def kind(self) -> str:
        return "linear" if self.w1 is None else "mlp"

    @property
    def in_width(self) -> int:
        """The width of the feature the head reads (all blocks, selected or not)."""
        return len(self.mu) * self.blocks // len(self.select)

    def unit(self, x: np.ndarray) -> np.ndarray:
        return unit_blocks(x, self.blocks, self.select)

    def hidden(self, z: np.ndarray) -> np.ndarray:
        if self.w1 is None:
            return z
        return np.maximum(z @ self.w1 + self.b1, 0.0)

    def logit(self, x: np.ndarray) -> np.ndarray:
        return self.hidden((self.unit(x) - self.mu) / self.sigma) @ self.w + self.b

    def prob(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(x)))

    def arrays(self) -> dict[str, np.ndarray]:
        """The head as named arrays, each C-contiguous (safetensors writes the raw
        buffer: a transposed view would be stored transposed)."""
        out = {"w": self.w.astype(np.float32), "b": np.asarray([self.b], np.float32),
               "mu": self.mu.astype(np.float32), "sigma": self.sigma.astype(np.float32),
               "blocks": np.asarray([self.blocks], np.int64), "select": np.asarray(self.select, np.int64)}
        if self.w1 is not None:
            # Half precision: the hidden layer is most of the head's size (fp32 would
            # double a shipped model's files); `fit_mlp` rounds to it before calibration.
            out["w1"] = self.w1.astype(np.float16)
            out["b1"] = np.asarray(self.b1, np.float32)
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Head:
        blocks = int(np.asarray(a["blocks"]).reshape(-1)[0]) if "blocks" in a else 1
        select = tuple(int(i) for i in np.asarray(a["select"]).reshape(-1)) if "select" in a else (0,)
        w1 = np.asarray(a["w1"], np.float64) if "w1" in a else None
        b1 = np.asarray(a["b1"], np.float64) if "b1" in a else None
        return cls(np.asarray(a["w"], np.float64), float(np.asarray(a["b"]).reshape(-1)[0]),
                   np.asarray(a["mu"], np.float64), np.asarray(a["sigma"], np.float64), blocks, select, w1, b1)


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


HEADS = ("linear", "mlp")


@dataclass(frozen=True)
class MlpConfig:
    """The MLP probe's training: chosen by leave-one-generator-out ROC-AUC on the
    training generators (benchmarks/head_study.py), not on any test set."""

    hidden: int = 256
    dropout: float = 0.7  # on the input and the hidden layer: a strong prior against fitting one generator's quirks
    weight_decay: float = 1e-2
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0


def fit_mlp(x: np.ndarray, y: np.ndarray, cfg: MlpConfig = MlpConfig(), blocks: int = 1,
            select: Sequence[int] = (0,), weight: np.ndarray | None = None) -> Head:
    """A one-hidden-layer ReLU probe on the same standardised unit-block features as
    `fit_logistic`, trained with torch (the `train` extra) on the CPU: AdamW, dropout,
    sample weights, a fixed seed and one thread (the same data gives the same head).
    The hidden layer is rounded to half precision, as it is stored."""
    try:
        import torch
    except ImportError:
        raise MaiError("an MLP probe is trained with torch: pip install 'mai-detect[train]' "
                       "(or use the linear head: --head linear)") from None
    u = unit_blocks(x, blocks, select)
    mu, sigma = u.mean(0), u.std(0) + 1e-6
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        z = torch.tensor((u - mu) / sigma, dtype=torch.float32)
        t = torch.tensor(np.asarray(y, np.float32))
        sw = torch.tensor(np.ones(len(y), np.float32) if weight is None else np.asarray(weight, np.float32))
        first, last = torch.nn.Linear(z.shape[1], cfg.hidden), torch.nn.Linear(cfg.hidden, 1)
        net = torch.nn.Sequential(torch.nn.Dropout(cfg.dropout), first, torch.nn.ReLU(),
                                  torch.nn.Dropout(cfg.dropout), last)
        opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
        net.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(t), generator=gen)
            for i in range(0, len(t), cfg.batch_size):
                b = order[i:i + cfg.batch_size]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(z[b])[:, 0], t[b], reduction="none")
                loss = (loss * sw[b]).sum() / sw[b].sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            w1 = np.ascontiguousarray(first.weight.T.numpy()).astype(np.float16).astype(np.float64)
            b1, w2 = first.bias.numpy().astype(np.float64), last.weight[0].numpy().astype(np.float64)
            b2 = float(last.bias[0])
    finally:
        torch.set_num_threads(threads)
    return Head(w2, b2, mu, sigma, blocks, tuple(int(i) for i in select), w1, b1)
