"""Does adapting CLIP's last block beat the frozen probe on generators it never saw?

The default probe (`mai-clip-wild-mlp`) is an MLP on the class tokens of frozen CLIP
ViT-B/16 blocks 7-12. Every frozen-feature lever has been measured flat (blocks,
heads, views, augmentation: the default model's card), so this study takes the
published next step, a low-rank adapter (LoRA) on the tower, at the size a 2-core
CPU can train: the last block only. MAI reads only the last block's class token, so
the block is computed for token 0 alone (keys and values from all 197 tokens of
block 11's output, as `mai.backbone.class_token_only` serves it), and block 11's
tokens are extracted once and cached (fp16, about 300 KB an image).

Recipe (LP-FT: a probe first, then the adapter and the probe together, which keeps
the pretrained features' robustness better than tuning from a random head; Kumar
et al., ICLR 2022): the default's MLP (`fit_mlp`) on frozen features, then LoRA of
rank `--rank` on the block's six products (q, k, v, out, fc1, fc2) trained jointly
with that head for `--epochs` epochs. A merged adapter is exactly a new weight
matrix, so a winner would ship as changed block-12 weights in the backbone graph.

    python benchmarks/adapter_study.py extract --shared ../shared/data --wild WILD
    python benchmarks/adapter_study.py study   --shared ../shared/data --wild WILD

`extract` fills the probe's own feature cache as it goes (`mai train probe` then
finds those files); `study` prints one row per model. The rule, written before any
figure was seen: the adapter is kept only if its leave-one-generator-out mean
ROC-AUC on the training generators beats the frozen probe's by >= 0.005 with
validation ROC-AUC not lower; the held-out columns are printed for the record.

Result (2026-12-06, AMD EPYC, 2 cores): not kept, LOGO mean 0.949 against 0.948 over five
folds, held-out sets unchanged; the table is in mai/pretrained/mai-clip-wild-mlp/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from head_study import folds  # noqa: E402
from probe_study import EXCLUDE, cat  # noqa: E402

from mai.backbone import FEATURES, feature_graph, get_backbone  # noqa: E402
from mai_train import metrics  # noqa: E402
from mai_train.data import open_dataset  # noqa: E402
from mai_train.evaluate import Features, decode_item  # noqa: E402
from mai_train.probe import MlpConfig, fit_mlp  # noqa: E402
from mai_train.probe_data import select  # noqa: E402
from mai_train.train_probe import Pool, feature_cache_path, parse_blocks, probe_spec, save_features  # noqa: E402

SELECT = parse_blocks("7-12", 12)
TOKENS = "tok11"  # block 11's output, all 197 tokens: the last block's input


def pools(train_only: bool = False) -> list[tuple[str, str, str | None, int | None]]:
    """(data set, split, perturbation, cap per (source, label)) of every pool the study reads."""
    sets = ("modern", "wild", "cifake")
    out = [(k, "train", p, 600 if k == "cifake" else None) for k in sets for p in (None, "wild")]
    out += [(k, "val", p, 200 if k == "cifake" else None) for k in sets for p in (None, "web")]
    if not train_only:
        out += [("modern", "test_generator", p, None) for p in (None, "web", "jpeg50")]
        out += [("modern", "val", "jpeg50", None)]
        out += [("wild", s, p, None) for s in ("test_generator", "test_real") for p in (None, "web", "jpeg50")]
        out += [("imagenet", "all", p, None) for p in (None, "jpeg50")]
    return out


class Data:
    def __init__(self, shared: Path, wild: Path) -> None:
        self.bb = get_backbone("clip-vit-b16")
        self.spec = probe_spec(self.bb, "center_crop")
        self.paths = {"modern": shared / "modern-train.tar", "cifake": shared / "cifake-train.tar", "wild": wild,
                      "imagenet": shared / "imagenet-samples-real.tar"}
        self.sets: dict = {}
        self._session = None

    def session(self):
        """The served fp32 feature graph with block 11's tokens as one more output."""
        if self._session is None:
            import onnx
            import onnxruntime as ort

            m = onnx.load(str(feature_graph(self.bb)))
            m.graph.node.append(onnx.helper.make_node("Identity", [self.bb.blocks[-2]], [TOKENS]))
            m.graph.output.append(onnx.helper.make_tensor_value_info(TOKENS, onnx.TensorProto.FLOAT, None))
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # the decode thread needs a core
            self._session = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return self._session

    def items(self, key: str, split: str, cap: int | None):
        ds = self.sets.setdefault(key, open_dataset(self.paths[key]))
        its = ds.items if split == "all" else select(ds, split, EXCLUDE, cap)
        return ds, list(its)

    def load(self, key: str, split: str, perturb: str | None, cap: int | None, say=print) -> tuple[Pool, np.ndarray]:
        """The pool's `layers` rows and its block-11 tokens (memory-mapped fp16)."""
        from mai_train.augment import PERTURBATIONS

        ds, items = self.items(key, split, cap)
        path = feature_cache_path(self.bb, ds, items, self.spec, perturb)
        tok_path = path.with_name(path.stem + f".{TOKENS}.npy")
        if not (path.is_file() and tok_path.is_file()):
            t0 = time.monotonic()
            aug = PERTURBATIONS[perturb] if perturb else None
            names = [o.name for o in self.session().get_outputs()]
            out: dict[str, list] = {n: [] for n in names}
            labels, sources, relpaths, bad = [], [], [], []

            def decode(it):
                try:
                    return it, decode_item(ds, it, self.spec, augment=aug), None
                except Exception as e:  # noqa: BLE001 - counted, as mai_train.evaluate does
                    return it, None, f"{type(e).__name__}: {e}"

            with ThreadPoolExecutor(1) as pool:
                batch_size = 16
                for start in range(0, len(items), batch_size):
                    done = list(pool.map(decode, items[start:start + batch_size]))
                    xs = []
                    for it, x, err in done:
                        if x is None:
                            bad.append((it.relpath, err))
                            continue
                        xs.append(x)
                        labels.append(it.label)
                        sources.append(it.source)
                        relpaths.append(it.relpath)
                    if xs:
                        res = dict(zip(names, self.session().run(names, {"image": np.stack(xs)}), strict=True))
                        for n in names:
                            out[n].append(res[n].astype(np.float16) if n == TOKENS else res[n])
                    if (start // batch_size) % 25 == 0:
                        k = start + len(done)
                        say(f"  {key} {split} {perturb or 'clean'}: {k}/{len(items)} "
                            f"{k / (time.monotonic() - t0):.1f}/s")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = tok_path.with_name(tok_path.name + ".tmp.npy")
            np.save(tmp, np.concatenate(out[TOKENS]))
            tmp.replace(tok_path)
            if not path.is_file():  # the probe's own cache: same key, same graph, same arrays
                save_features(path, Features({n: np.concatenate(out[n]) for n in FEATURES},
                                             np.asarray(labels, np.int64), sources, relpaths, bad))
            say(f"  {key} {split} {perturb or 'clean'}: {len(items)} in {time.monotonic() - t0:.0f} s")
        with np.load(path, allow_pickle=False) as z:
            rel = list(z["relpaths"])
            gen = {it.relpath: it.generator or it.source for it in items}
            n = len(rel)
            pool = Pool(z["layers"], z["labels"], np.asarray(list(z["sources"]), dtype=object), rel,
                        np.full(n, perturb or "", dtype=object), [], np.ones(n),
                        np.full(n, ds.name, dtype=object), np.asarray([gen[r] for r in rel], dtype=object))
        tok = np.load(tok_path, mmap_mode="r")
        if len(tok) != n:
            raise SystemExit(f"{tok_path}: {len(tok)} token rows for {n} feature rows")
        return pool, tok


# ----------------------------------------------------------------------------- the adapter


def block_weights(bb) -> dict[str, np.ndarray]:
    """The last block's parameters from the served fp32 graph, by the HF export's node names."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(feature_graph(bb)))
    init = {i.name: i for i in m.graph.initializer}
    p = bb.last_block
    w: dict[str, np.ndarray] = {}
    for n in m.graph.node:
        if not n.name.startswith(p + "/"):
            continue
        part = n.name[len(p) + 1:].split("/")[0:2]
        consts = [i for i in n.input if i in init]
        if n.op_type == "MatMul" and consts:
            w[f"{part[-1]}.w"] = numpy_helper.to_array(init[consts[0]])
        elif n.op_type == "Add" and consts:
            key = part[-1] if part[0] != "layer_norm1" and part[0] != "layer_norm2" else part[0]
            w[f"{key}.b"] = numpy_helper.to_array(init[consts[0]])
        elif n.op_type == "Mul" and consts and part[0].startswith("layer_norm"):
            w[f"{part[0]}.w"] = numpy_helper.to_array(init[consts[0]])
    need = [f"{k}.{s}" for k in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2") for s in "wb"]
    need += [f"layer_norm{i}.{s}" for i in (1, 2) for s in "wb"]
    missing = [k for k in need if k not in w]
    if missing:
        raise SystemExit(f"last block: parameters not found: {missing}")
    return {k: w[k].astype(np.float32) for k in need}


def make_model(weights: dict[str, np.ndarray], mu: np.ndarray, sigma: np.ndarray, head, rank: int, alpha: float):
    import torch
    from torch import nn

    class Lora(nn.Module):
        def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("w", torch.tensor(w))
            self.register_buffer("b", torch.tensor(b))
            self.a = nn.Parameter(torch.randn(w.shape[0], rank) / w.shape[0] ** 0.5) if rank else None
            self.u = nn.Parameter(torch.zeros(rank, w.shape[1])) if rank else None
            self.scale = alpha / max(rank, 1)

        def forward(self, x):
            y = x @ self.w + self.b
            return y if self.a is None else y + (x @ self.a) @ self.u * self.scale

        def merged(self) -> np.ndarray:
            with torch.no_grad():
                return (self.w + (self.a @ self.u * self.scale if self.a is not None else 0)).numpy()

    class Block(nn.Module):
        """CLIP's pre-norm block for the class token alone (keys, values from every token)."""

        def __init__(self) -> None:
            super().__init__()
            for k in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
                setattr(self, k, Lora(weights[f"{k}.w"], weights[f"{k}.b"]))
            for i in (1, 2):
                ln = nn.LayerNorm(768, eps=1e-5)
                ln.weight.data = torch.tensor(weights[f"layer_norm{i}.w"])
                ln.bias.data = torch.tensor(weights[f"layer_norm{i}.b"])
                ln.requires_grad_(False)
                setattr(self, f"ln{i}", ln)

        def forward(self, x):  # (B, 197, 768) -> (B, 768)
            b, t, d = x.shape
            h = self.ln1(x)
            q = self.q_proj(h[:, 0]).view(b, 12, 64) * 0.125
            k = self.k_proj(h).view(b, t, 12, 64)
            v = self.v_proj(h).view(b, t, 12, 64)
            att = torch.softmax(torch.einsum("bhd,bthd->bht", q, k), dim=-1)
            r = x[:, 0] + self.out_proj(torch.einsum("bht,bthd->bhd", att, v).reshape(b, d))
            m = self.fc1(self.ln2(r))
            return r + self.fc2(m * torch.sigmoid(1.702 * m))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()
            self.register_buffer("mu", torch.tensor(mu, dtype=torch.float32))
            self.register_buffer("sigma", torch.tensor(sigma, dtype=torch.float32))
            self.first = nn.Linear(len(mu), head.w1.shape[1])
            self.last = nn.Linear(head.w1.shape[1], 1)
            with torch.no_grad():
                self.first.weight.copy_(torch.tensor(head.w1.T))
                self.first.bias.copy_(torch.tensor(head.b1))
                self.last.weight.copy_(torch.tensor(head.w[None]))
                self.last.bias.fill_(head.b)
            self.drop = nn.Dropout(0.7)

        def features(self, layers, tok):  # layers (B, 12*768): blocks 7-11 as cached, block 12 recomputed
            last = self.block(tok)
            parts = [layers[:, i * 768:(i + 1) * 768] for i in SELECT[:-1]] + [last]
            u = torch.cat([p / p.norm(dim=1, keepdim=True).clamp_min(1e-12) for p in parts], dim=1)
            return (u - self.mu) / self.sigma

        def forward(self, layers, tok):
            z = self.features(layers, tok)
            return self.last(self.drop(torch.relu(self.first(self.drop(z)))))[:, 0]

    return Model()


@dataclass
class Rows:
    pool: Pool
    tok: list  # memory-mapped token arrays, one per part, and the row -> (part, index) map
    where: np.ndarray

    @classmethod
    def of(cls, parts: list[tuple[Pool, np.ndarray]]) -> Rows:
        where = np.concatenate([np.stack([np.full(len(p.labels), i), np.arange(len(p.labels))], 1)
                                for i, (p, _) in enumerate(parts)])
        return cls(cat(*[p for p, _ in parts]), [t for _, t in parts], where)

    def tokens(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), 197, 768), np.float32)
        for j, (part, k) in enumerate(self.where[idx]):
            out[j] = self.tok[part][k]
        return out

    def sub(self, mask: np.ndarray) -> Rows:
        return Rows(self.pool.rows(mask), self.tok, self.where[mask])


class Adapted:
    """The jointly tuned block + head, scoring `Rows`."""

    def __init__(self, model) -> None:
        self.model = model

    def prob_rows(self, r: Rows, batch: int = 256) -> np.ndarray:
        import torch

        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(r.pool.labels), batch):
                idx = np.arange(i, min(i + batch, len(r.pool.labels)))
                lo = self.model(torch.tensor(r.pool.x[idx], dtype=torch.float32), torch.tensor(r.tokens(idx)))
                out.append(torch.sigmoid(lo).numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


class Frozen:
    def __init__(self, head) -> None:
        self.head = head

    def prob_rows(self, r: Rows) -> np.ndarray:
        return self.head.prob(r.pool.x)


def fit_frozen(tr: Rows) -> Frozen:
    return Frozen(fit_mlp(tr.pool.x, tr.pool.labels, MlpConfig(), blocks=12, select=SELECT, weight=tr.pool.weight))


def fit_adapter(tr: Rows, weights: dict, rank: int, epochs: int, lr: float, head_lr: float, say=print) -> Adapted:
    """LP-FT: the frozen MLP first, then LoRA on the last block with that head."""
    import torch

    base = fit_frozen(tr).head
    torch.manual_seed(0)
    model = make_model(weights, base.mu, base.sigma, base, rank, alpha=2.0 * rank)
    lora = [p for n, p in model.named_parameters() if n.startswith("block.")]
    head = [p for n, p in model.named_parameters() if not n.startswith("block.")]
    opt = torch.optim.AdamW([{"params": lora, "lr": lr, "weight_decay": 0.0},
                             {"params": head, "lr": head_lr, "weight_decay": 1e-2}])
    y = torch.tensor(tr.pool.labels, dtype=torch.float32)
    sw = torch.tensor(tr.pool.weight, dtype=torch.float32)
    rng = np.random.default_rng(0)
    n = len(y)
    steps = epochs * ((n + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, head_lr], total_steps=steps, pct_start=0.1)
    t0 = time.monotonic()
    for ep in range(epochs):
        model.train()
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, 64):
            idx = np.sort(order[i:i + 64])
            lo = model(torch.tensor(tr.pool.x[idx], dtype=torch.float32), torch.tensor(tr.tokens(idx)))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(lo, y[idx], reduction="none")
            loss = (loss * sw[idx]).sum() / sw[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        say(f"    epoch {ep + 1}/{epochs}: loss {total / n:.4f}, {time.monotonic() - t0:.0f} s")
    return Adapted(model)


def logo(fit, tr: Rows, val: Rows, only: set[str] | None = None) -> dict[str, float]:
    """ROC-AUC of each training generator's fakes under a model trained without it
    (as benchmarks/head_study.py)."""
    aucs = {}
    v = val.pool
    for g, out, home in folds(tr.pool):
        if only is not None and g not in only:
            continue
        m = fit(tr.sub(~out))
        unseen = np.concatenate([m.prob_rows(tr.sub(out)), m.prob_rows(val.sub((v.labels == 1) & (v.generator == g)))])
        reals = m.prob_rows(val.sub((v.labels == 0) & np.isin(v.dataset, home)))
        aucs[g] = metrics.roc_auc(np.r_[unseen, reals], np.r_[np.ones(len(unseen)), np.zeros(len(reals))])
        print(f"    left out {g}: ROC-AUC {aucs[g]:.3f}", flush=True)
    return aucs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["extract", "check", "study"])
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--wild", type=Path, required=True)
    ap.add_argument("--train-only", action="store_true", help="extract: the training and validation pools only")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4, help="the adapter's peak learning rate")
    ap.add_argument("--head-lr", type=float, default=1e-4)
    ap.add_argument("--logo", default="", help="generators to leave out, separated by ';' (default: all)")
    ap.add_argument("--models", default="frozen,adapter", help="which rows: frozen, adapter or both")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    d = Data(args.shared, args.wild)
    if args.what == "extract":
        for key, split, perturb, cap in pools(args.train_only):
            d.load(key, split, perturb, cap)
        return
    import torch

    torch.set_num_threads(args.threads)
    weights = block_weights(d.bb)
    if args.what == "check":  # the torch block reproduces the graph's block-12 class token
        pool, tok = d.load("modern", "train", None, None)
        model = make_model(weights, np.zeros(4608), np.ones(4608), fit_stub(), 0, 1.0)
        with torch.no_grad():
            got = model.block(torch.tensor(np.asarray(tok[:64], np.float32))).numpy()
        want = pool.x[:64, 11 * 768:]
        print(f"max |torch - graph| = {np.abs(got - want).max():.2e} (scale {np.abs(want).max():.1f})")
        return
    parts = {s: [d.load(*t) for t in pools(True) if t[1] == s] for s in ("train", "val")}
    tr, val = Rows.of(parts["train"]), Rows.of(parts["val"])
    tr.pool.weight[tr.pool.dataset == "cifake-train"] = 0.2
    mval = Rows.of([d.load("modern", "val", None, None)])

    def vs(fakes: Rows, reals: Rows) -> Rows:
        f, r = fakes.sub(fakes.pool.labels == 1), reals.sub(reals.pool.labels == 0)
        return Rows(cat(f.pool, r.pool), f.tok + r.tok,
                    np.concatenate([f.where, r.where + np.array([len(f.tok), 0])]))

    tests = {
        "modern test_gen": vs(Rows.of([d.load("modern", "test_generator", None, None)]), mval),
        "same, web": vs(Rows.of([d.load("modern", "test_generator", "web", None)]),
                        Rows.of([d.load("modern", "val", "web", None)])),
        "same, q50": vs(Rows.of([d.load("modern", "test_generator", "jpeg50", None)]),
                        Rows.of([d.load("modern", "val", "jpeg50", None)])),
        "wild test": vs(Rows.of([d.load("wild", "test_generator", None, None)]),
                        Rows.of([d.load("wild", "test_real", None, None)])),
    }
    only = set(args.logo.split(";")) if args.logo else None
    fits = {"frozen MLP (the default's recipe)": fit_frozen,
            f"LoRA r{args.rank} on block 12, {args.epochs} ep, lr {args.lr:g}":
                lambda r: fit_adapter(r, weights, args.rank, args.epochs, args.lr, args.head_lr)}
    fits = {k: f for (k, f), key in zip(fits.items(), ("frozen", "adapter"), strict=True)
            if key in args.models.split(",")}
    print(f"{len(tr.pool.labels)} training rows, {len(val.pool.labels)} validation rows")
    print("| model | LOGO mean ROC-AUC (min, n) | val ROC-AUC | " + " | ".join(
        f"{k}: ROC-AUC / TPR at val FPR 5%" for k in tests) + " | seconds |")
    print("|---" * (len(tests) + 4) + "|")
    for name, fit in fits.items():
        t0 = time.monotonic()
        aucs = logo(fit, tr, val, only)
        m = fit(tr)
        sv = m.prob_rows(val)
        thr = np.quantile(sv[val.pool.labels == 0], 0.95)
        cells = []
        for r in tests.values():
            s = m.prob_rows(r)
            cells.append(f"{metrics.roc_auc(s, r.pool.labels):.3f} / {np.mean(s[r.pool.labels == 1] > thr):.0%}")
        print(f"| {name} | {np.mean(list(aucs.values())):.3f} ({min(aucs.values()):.3f}, {len(aucs)}) | "
              f"{metrics.roc_auc(sv, val.pool.labels):.3f} | " + " | ".join(cells)
              + f" | {time.monotonic() - t0:.0f} |", flush=True)
        print("   LOGO: " + ", ".join(f"{g} {a:.3f}" for g, a in aucs.items()), flush=True)


def fit_stub():
    from mai_train.probe import Head

    return Head(np.zeros(1), 0.0, np.zeros(4608), np.ones(4608), 12, SELECT, np.zeros((4608, 1)), np.zeros(1))


if __name__ == "__main__":
    main()
