"""`mai train probe`: a logistic head on a frozen backbone's features (no torch).

Features are extracted once per data set, split, view and backbone and cached in
the app folder (`$MAI_HOME/features/`), so trying another feature, view or
regularisation costs seconds. The regularisation strength is chosen on the
validation split by ROC-AUC; the threshold and the uncertainty band are then
calibrated on the same split by the rule every MAI detector uses
(`mai_train.evaluate.calibrate`). The run folder becomes a model artifact: `mai.json`,
the head's weights in `model.safetensors`; `mai train probe` then adds the head as
`model.fp32.onnx` (`export.probe_head`), proven equal to the numpy head on
validation features before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mai.appdir import app_dir
from mai.artifact import SCHEMA, WEIGHTS_NAME, Artifact, load_artifact, sha256_file
from mai.backbone import FEATURES, Backbone, feature_graph, get_backbone
from mai.errors import MaiError
from mai.preprocess import PreprocessSpec, Step
from mai_train import metrics
from mai_train.checkpoint import versions
from mai_train.data import DataSet, Item, open_dataset
from mai_train.evaluate import Scored, calibrate
from mai_train.probe import HEADS, Features, Head, MlpConfig, extract, fit_logistic, fit_mlp

VIEWS = ("crop", "center_crop")  # native 224 centre crop, or the whole image resized (CLIP's own recipe)
L2_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


class ProbeError(MaiError):
    """A probe run that cannot go on; the message says why."""


@dataclass
class ProbeConfig:
    data: Sequence[str]  # one or more data sets, each with its own split
    out: str
    backbone: str = "clip-vit-b16"
    feature: str = "embed"
    view: str = "crop"
    blocks: str | None = None  # `layers` only: 1-based block numbers, "4-12" or "6,9,12"
    exclude_source: Sequence[str] = ()  # glob patterns: sources kept out of training and validation
    cap: Sequence[str] = ()  # "NAME=N": at most N items per (source, label) of the data set NAME
    val_cap: Sequence[str] = ()  # "NAME=N" for the validation split (default: as --cap)
    weight: Sequence[str] = ()  # "NAME=W": each training row of data set NAME counts W times (default 1)
    augment: str | None = None  # a perturbation: training also sees one processed copy of each image
    val_perturb: Sequence[str] = ()  # validation also holds these processed copies
    calibrate: str = "val"  # "val": on the validation split; "unseen": each generator's scores from a head without it
    head: str = "linear"  # "linear" (logistic, no torch) or "mlp" (one hidden layer, torch)
    hidden: int = 256  # the MLP head's hidden units
    l2: Sequence[float] = field(default_factory=lambda: L2_GRID)
    target_fpr: float | None = None
    band_precision: float = 0.98
    batch_size: int = 16
    threads: int | None = None
    name: str | None = None


CALIBRATIONS = ("val", "unseen")
MIN_HELD_OUT = 10  # a generator with fewer fake images is not left out on its own


def probe_spec(bb: Backbone, view: str) -> PreprocessSpec:
    if view not in VIEWS:
        raise ProbeError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
    return PreprocessSpec(steps=(Step((bb.size, bb.size), "bicubic"),), fit=view, mean=bb.mean, std=bb.std)


def feature_session(bb: Backbone, threads: int | None = None) -> Any:
    """The backbone's feature graph on the CPU (training and evaluation are offline work)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(feature_graph(bb)), sess_options=opts, providers=["CPUExecutionProvider"])


def feature_cache_path(bb: Backbone, ds: DataSet, items: list[Item], spec: PreprocessSpec,
                       perturb: str | None = None) -> Path:
    """Where `cached_features` keeps these items' features (`.npz`); a study that
    keeps more of the graph's outputs names its own files after it."""
    from mai.backbone import GRAPH_VERSION

    key = hashlib.sha256(json.dumps(
        [bb.sha256, GRAPH_VERSION, spec.to_json(), ds.fingerprint(), [it.relpath for it in items],
         perturb or ""]).encode()).hexdigest()
    return app_dir() / "features" / f"{key[:24]}.npz"


def cached_features(bb: Backbone, ds: DataSet, items: list[Item], spec: PreprocessSpec, threads: int | None,
                    batch_size: int, log: Any = None, perturb: str | None = None) -> Features:
    """`mai_train.probe.extract`, cached by backbone graph, spec, data, items and
    `perturb` (a name in `mai_train.augment.PERTURBATIONS`: the copies it makes)."""
    from mai_train.augment import PERTURBATIONS

    if perturb is not None and perturb not in PERTURBATIONS:
        raise ProbeError(f"unknown perturbation {perturb!r}; use one of {', '.join(PERTURBATIONS)}")
    path = feature_cache_path(bb, ds, items, spec, perturb)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return Features({n: z[n] for n in FEATURES if n in z}, z["labels"], list(z["sources"]),
                            list(z["relpaths"]), [tuple(r) for r in z["unreadable"].reshape(-1, 2)])
    t0 = time.monotonic()
    said = [0]

    def progress(k: int) -> None:
        if log is not None and (k - said[0] >= 200 or k == len(items)):
            said[0] = k
            log(f"  features: {k}/{len(items)} images, {k / max(time.monotonic() - t0, 1e-9):.1f}/s")

    f = extract(feature_session(bb, threads), ds, items, spec, batch_size, progress=progress,
                perturb=PERTURBATIONS[perturb] if perturb else None)
    save_features(path, f)
    return f


def save_features(path: Path, f: Features) -> None:
    """A feature cache file, written under a temporary name and renamed (a cut run leaves none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, labels=f.labels, sources=np.asarray(f.sources, dtype=str), relpaths=np.asarray(f.relpaths, dtype=str),
             unreadable=np.asarray(f.unreadable, dtype=str).reshape(-1, 2), **f.feats)
    os.replace(tmp, path)


def parse_blocks(text: str | None, n: int) -> tuple[int, ...]:
    """ "4-12" or "6,9,12" (1-based block numbers) -> 0-based indices; None: all `n`."""
    if text is None:
        return tuple(range(n))
    picked: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            picked.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ProbeError(f"--blocks {text!r}: use block numbers 1-{n}, as 4-12 or 6,9,12") from None
    if not picked or min(picked) < 1 or max(picked) > n:
        raise ProbeError(f"--blocks {text!r}: block numbers run from 1 to {n}")
    return tuple(sorted(i - 1 for i in picked))


def _caps(pairs: Sequence[str]) -> dict[str, int]:
    caps = {}
    for pair in pairs:
        name, _, n = pair.partition("=")
        if not n.isdigit() or int(n) < 1:
            raise ProbeError(f"--cap {pair!r}: use NAME=N, N a positive count (e.g. cifake-train=600)")
        caps[name] = int(n)
    return caps


def _weights(pairs: Sequence[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, _, w = pair.partition("=")
        try:
            out[name] = float(w)
        except ValueError:
            out[name] = -1.0
        if not out[name] > 0:
            raise ProbeError(f"--weight {pair!r}: use NAME=W, W a positive number (e.g. cifake-train=0.2)")
    return out


@dataclass
class Pool:
    """Features of one split of several data sets, clean and processed copies, as rows."""

    x: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    relpaths: list[str]
    copy: np.ndarray  # the perturbation that made the row ("" for the file as it is)
    unreadable: list[tuple[str, str]]
    weight: np.ndarray  # how much each row counts in the fit
    dataset: np.ndarray  # the data set's name
    generator: np.ndarray  # the manifest's generator, else the source

    def rows(self, mask: np.ndarray) -> Pool:
        return Pool(self.x[mask], self.labels[mask], self.sources[mask],
                    [r for r, m in zip(self.relpaths, mask, strict=True) if m], self.copy[mask], [], self.weight[mask],
                    self.dataset[mask], self.generator[mask])

    def scored(self, probs: np.ndarray) -> Scored:
        return Scored(np.asarray(probs, np.float64), self.labels, list(self.sources), self.relpaths, self.unreadable)


def load_pool(bb: Backbone, spec: PreprocessSpec, sets: Sequence[DataSet], split: str, feature: str,
              perturbs: Sequence[str | None], cfg: ProbeConfig, log: Any = None) -> Pool:
    from mai_train.probe_data import select

    caps, weights = _caps(cfg.cap), _weights(cfg.weight)
    if split != "train":
        caps.update(_caps(cfg.val_cap))
    parts = []
    for ds in sets:
        items = select(ds, split, cfg.exclude_source, caps.get(ds.name))
        for p in perturbs:
            f = cached_features(bb, ds, items, spec, cfg.threads, cfg.batch_size, log=log, perturb=p)
            gen = {it.relpath: it.generator or it.source for it in items}
            parts.append((f, p or "", weights.get(ds.name, 1.0), ds.name, [gen[r] for r in f.relpaths]))
    return Pool(np.concatenate([f.feats[feature] for f, *_ in parts]),
                np.concatenate([f.labels for f, *_ in parts]),
                np.asarray([s for f, *_ in parts for s in f.sources], dtype=object),
                [r for f, *_ in parts for r in f.relpaths],
                np.asarray([p for f, p, *_ in parts for _ in f.labels], dtype=object),
                [u for f, *_ in parts for u in f.unreadable],
                np.asarray([w for f, _, w, *_ in parts for _ in f.labels], dtype=np.float64),
                np.asarray([d for f, _, _, d, _ in parts for _ in f.labels], dtype=object),
                np.asarray([g for *_, gens in parts for g in gens], dtype=object))


def unseen_generators(tr: Pool, va: Pool, fit: Any, full: np.ndarray, say: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Leave each generator out of training in turn (a manifest's `generator`,
    else the source): its validation fakes get the score of a head that never saw
    it, as an unseen generator would. A generator is left out only where its data
    set keeps other generators in training: leaving out a data set's only one
    (CIFAKE's) removes a whole kind of image, not a generator. Returns those
    out-of-fold scores (reals and the rest keep `full`'s) and per generator the
    ROC-AUC of its unseen fakes (training and validation files, as they are)
    against the clean validation reals of its own data set (reals of another data
    set may differ in size or format, which would flatter the score)."""
    from mai_train import metrics

    oof = np.array(full, np.float64)
    table: dict[str, Any] = {}
    fakes = tr.labels == 1
    for g in sorted(set(tr.generator[fakes])):
        out = fakes & (tr.generator == g)
        home = sorted(set(tr.dataset[out]))
        others = fakes & ~out & np.isin(tr.dataset, home) & (tr.copy == "")
        if (out & (tr.copy == "")).sum() < MIN_HELD_OUT or others.sum() < MIN_HELD_OUT:
            continue
        head = fit(tr.rows(~out))
        mine = (va.labels == 1) & (va.generator == g)
        oof[mine] = head.prob(va.x[mine])
        unseen = np.concatenate([head.prob(tr.x[out & (tr.copy == "")]), oof[mine & (va.copy == "")]])
        reals = head.prob(va.x[(va.labels == 0) & (va.copy == "") & np.isin(va.dataset, home)])
        auc = metrics.roc_auc(np.concatenate([unseen, reals]),
                              np.concatenate([np.ones(len(unseen)), np.zeros(len(reals))]))
        table[g] = {"data": home, "fake": int(len(unseen)), "real": int(len(reals)), "roc_auc": auc}
        say(f"  without {g}: its {len(unseen)} fakes vs {len(reals)} val reals of {', '.join(home)}, "
            f"ROC-AUC {auc:.4f}")
    aucs = [t["roc_auc"] for t in table.values() if t["roc_auc"] is not None]
    return oof, {"per_generator": table, "mean_roc_auc": float(np.mean(aucs)) if aucs else None}


#: The step after the artifact is written: (artifact, validation features) -> a line
#: for the log. `mai train probe` passes `export.probe_head.proven_head_line`, which
#: writes and proves the head's ONNX file (the training wing does not import the export).
Finish = Callable[[Artifact, np.ndarray], str]


@dataclass
class _Inputs:
    """What a probe run learns from: the backbone and its view, the data sets, their
    quality check, and the training and validation rows (features)."""

    data: list[str]
    bb: Backbone
    spec: PreprocessSpec
    nblocks: int
    select: tuple[int, ...]
    sets: list[DataSet]
    quality: Any
    tr: Pool
    va: Pool
    t0: float  # when feature extraction began: the run's wall_s counts from here

    def fit(self, pool: Pool, l2: float | None, mlp: MlpConfig | None = None) -> Head:
        """The linear head at regularisation `l2`, or with `mlp` the MLP head."""
        if mlp is not None:
            return fit_mlp(pool.x, pool.labels, mlp, blocks=self.nblocks, select=self.select, weight=pool.weight)
        return fit_logistic(pool.x, pool.labels, l2, blocks=self.nblocks, select=self.select, weight=pool.weight)


def train_probe(cfg: ProbeConfig, log: Any = None, finish: Finish | None = None) -> Path:
    """Extract (or reuse) features, fit, choose, calibrate and write the artifact;
    then `finish` it (the CLI: its ONNX head, written and proven)."""
    say = log or (lambda line: None)
    if cfg.feature not in FEATURES:
        raise ProbeError(f"unknown feature {cfg.feature!r}; use one of {', '.join(FEATURES)}")
    if cfg.head not in HEADS:
        raise ProbeError(f"unknown head {cfg.head!r}; use one of {', '.join(HEADS)}")
    if cfg.calibrate not in CALIBRATIONS:
        raise ProbeError(f"unknown calibration {cfg.calibrate!r}; use one of {', '.join(CALIBRATIONS)}")
    inp = _inputs(cfg, say)
    l2, tried, mlp = _choose_l2(cfg, inp, say) if cfg.head == "linear" else (None, [], _mlp(cfg, say))
    head, cal = _fit_and_calibrate(cfg, inp, l2, mlp, say)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS_NAME + ".tmp")
    tmp.write_bytes(head_bytes(head))
    os.replace(tmp, out / WEIGHTS_NAME)
    train = {"l2_chosen": l2, "l2_tried": tried,
             "selected_by": "val ROC-AUC (the strongest l2 within 0.002 of the best)" if mlp is None else
                            "fixed MLP settings (chosen by leave-one-generator-out ROC-AUC: benchmarks/head_study.py)",
             **({"mlp": asdict(mlp)} if mlp is not None else {}),
             "train_metrics": metrics.summarise(head.prob(inp.tr.x), inp.tr.labels, cal["threshold"]),
             "wall_s": round(time.monotonic() - inp.t0, 1)}
    meta = _meta(cfg, inp, cal, train, sha256_file(out / WEIGHTS_NAME), mlp)
    (out / "mai.json.tmp").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(out / "mai.json.tmp", out / "mai.json")
    art = load_artifact(out)
    done = f"; {finish(art, inp.va.x[:256])}" if finish is not None else ""
    rep = cal["metrics"]["val"]
    fitted = f"l2 {l2:g}" if l2 is not None else f"MLP {cfg.hidden}"
    say(f"saved {art.model_id} to {out} ({fitted}, threshold {art.threshold:.4f}, band "
        f"[{art.uncertain[0]:.4f}, {art.uncertain[1]:.4f}], val ROC-AUC {rep['roc_auc']:.4f}, "
        f"accuracy {rep['accuracy']:.4f}){done}")
    return out


def _inputs(cfg: ProbeConfig, say: Any) -> _Inputs:
    """The backbone, the data sets (checked), and their features, extracted or cached."""
    from mai_train.data_check import check, summary_lines

    data = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)
    bb = get_backbone(cfg.backbone)
    spec = probe_spec(bb, cfg.view)
    nblocks = len(bb.blocks) if cfg.feature == "layers" else 1
    if cfg.blocks is not None and cfg.feature != "layers":
        raise ProbeError("--blocks picks transformer blocks of the `layers` feature: add --feature layers")
    select = parse_blocks(cfg.blocks, nblocks)
    sets = [open_dataset(d) for d in data]
    quality = check(sets, decode=False)  # unreadable files are also counted as features are extracted
    if quality.problems:
        for line in summary_lines(quality):
            say(f"data check: {line}")
    t0 = time.monotonic()
    tr = load_pool(bb, spec, sets, "train", cfg.feature, (None, cfg.augment) if cfg.augment else (None,), cfg, say)
    va = load_pool(bb, spec, sets, "val", cfg.feature, (None, *cfg.val_perturb), cfg, say)
    if len(set(tr.labels.tolist())) < 2 or len(set(va.labels.tolist())) < 2:
        raise ProbeError(f"{', '.join(data)}: training ({len(tr.labels)} rows) and validation ({len(va.labels)} rows) "
                         "each need both classes; add data")
    say(f"{len(tr.labels)} training / {len(va.labels)} validation rows from {', '.join(data)}; "
        f"{bb.name} {cfg.feature}" + (f" blocks {cfg.blocks}" if cfg.blocks else "") + f", view {cfg.view}")
    return _Inputs(data, bb, spec, nblocks, select, sets, quality, tr, va, t0)


def _mlp(cfg: ProbeConfig, say: Any) -> MlpConfig:
    mlp = MlpConfig(hidden=cfg.hidden)
    say(f"  MLP head: {mlp.hidden} hidden units, dropout {mlp.dropout}, weight decay {mlp.weight_decay}, "
        f"{mlp.epochs} epochs (torch, CPU, seed {mlp.seed})")
    return mlp


def _choose_l2(cfg: ProbeConfig, inp: _Inputs, say: Any) -> tuple[float, list[dict[str, float]], None]:
    """The linear head's regularisation: the strongest l2 within 0.002 of the best
    validation ROC-AUC (simpler heads travel better). Returns it, every strength
    tried, and no MLP settings."""
    tried = []
    for l2 in cfg.l2:
        auc = metrics.roc_auc(inp.fit(inp.tr, l2).prob(inp.va.x), inp.va.labels) or 0.0
        tried.append({"l2": l2, "val_roc_auc": auc})
        say(f"  l2 {l2:g}: val ROC-AUC {auc:.4f}")
    best_auc = max(t["val_roc_auc"] for t in tried)
    return max(t["l2"] for t in tried if t["val_roc_auc"] >= best_auc - 0.002), tried, None


def _fit_and_calibrate(cfg: ProbeConfig, inp: _Inputs, l2: float | None, mlp: MlpConfig | None,
                       say: Any) -> tuple[Head, dict[str, Any]]:
    """The head on all training rows, and its threshold and band (`calibrate`) on
    validation, or on unseen generators (each left out of training in turn)."""
    va = inp.va
    head = inp.fit(inp.tr, l2, mlp)
    val_probs = head.prob(va.x)
    unseen = None
    if cfg.calibrate == "unseen":
        say("calibrating on unseen generators (each left out of training in turn):")
        val_probs, unseen = unseen_generators(inp.tr, va, lambda pool: inp.fit(pool, l2, mlp), val_probs, say)
    cal = calibrate(va.scored(val_probs), cfg.target_fpr, cfg.band_precision)
    if len(cfg.val_perturb):
        cal["calibration"]["on"] = (f"{len(va.labels)} validation rows (each file as it is and processed by "
                                    f"{', '.join(cfg.val_perturb)})")
    if unseen is not None:
        cal["calibration"]["on"] += (", each generator's fakes scored by a head trained without it "
                                     f"(mean leave-one-generator-out ROC-AUC {unseen['mean_roc_auc']:.4f})")
        cal["metrics"]["leave_one_generator_out"] = unseen
    return head, cal


def _meta(cfg: ProbeConfig, inp: _Inputs, cal: dict[str, Any], train: dict[str, Any], digest: str,
          mlp: MlpConfig | None) -> dict[str, Any]:
    """The artifact's mai.json."""
    name = cfg.name or Path(cfg.out).name
    args: dict[str, Any] = {"feature": cfg.feature, "dim": inp.bb.dim(cfg.feature)}
    if mlp is not None:  # a linear head's card stays as before
        args.update(head="mlp", hidden=mlp.hidden)
    if cfg.feature == "layers":
        args["blocks"] = [i + 1 for i in inp.select]
    tr, va = inp.tr, inp.va
    return {
        "schema": SCHEMA, "model_id": f"{name}@{digest[:8]}", "weights_sha256": digest, "name": name,
        "architecture": {"name": "probe", "args": args},
        "backbone": inp.bb.to_dict(),
        "preprocess": inp.spec.to_dict(),
        **cal,
        "data": {"sources": [{"path": str(d), "fingerprint": ds.fingerprint(), "split_rule": ds.split_rule,
                              "counts": ds.counts()} for d, ds in zip(inp.data, inp.sets, strict=True)],
                 "exclude_source": list(cfg.exclude_source), "cap": list(cfg.cap), "val_cap": list(cfg.val_cap),
                 "weight": list(cfg.weight),
                 "rows": {"train": len(tr.labels), "val": len(va.labels)},
                 "augment": cfg.augment, "val_perturb": list(cfg.val_perturb),
                 "unreadable_train": len(tr.unreadable), "unreadable_val": len(va.unreadable),
                 "check": {k: len(v) if isinstance(v, list) else v for k, v in inp.quality.to_dict().items()}},
        "train": {
            "command": " ".join(["mai", *sys.argv[1:]]) if sys.argv and "mai" in Path(sys.argv[0]).name else None,
            "config": {**asdict(cfg), "data": inp.data, "l2": list(cfg.l2), "exclude_source": list(cfg.exclude_source),
                       "cap": list(cfg.cap), "val_cap": list(cfg.val_cap),
                       "weight": list(cfg.weight), "val_perturb": list(cfg.val_perturb)},
            **train,
            "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        },
        "versions": versions(),
    }


def head_bytes(head: Head) -> bytes:
    """The head's `model.safetensors` as written; its digest is the model id's, also
    where the head is shipped as ONNX only (see `load_head`)."""
    from safetensors.numpy import save

    return save(head.arrays(), metadata={"format": "np"})


#: The head's ONNX initializers (`export.probe_head.head_onnx`) -> its named arrays.
ONNX_ARRAYS = {"mu": "mu", "sigma": "sigma", "w": "w", "b": "b", "select": "select", "w1_half": "w1", "b1": "b1"}


def _head_from_onnx(path: Path) -> Head:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ProbeError("reading a probe's head from its ONNX file needs the onnx package: "
                         "pip install 'mai-detect[train]'") from None
    try:
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
        arrays = {name: inits[key] for key, name in ONNX_ARRAYS.items() if key in inits}
        arrays["w"] = arrays["w"].reshape(-1)
        if "split" in inits:  # heads of one feature (mai-clip-modern's) have no blocks to split
            arrays["blocks"] = inits["split"][1:2]
        return Head.from_arrays(arrays)
    except Exception as e:  # noqa: BLE001 - a missing array, a bad protobuf, a short file: one user error
        raise ProbeError(f"{path} is not a readable probe head: {e}") from e


def load_head(art: Artifact) -> Head:
    """The probe's head from `model.safetensors`, or, where the model ships its head
    only as `model.fp32.onnx` (mai/pretrained: each model once), from that file's
    weights; either way checked against the digest in mai.json."""
    if art.weights.is_file():
        from safetensors.numpy import load_file

        digest, load = sha256_file(art.weights), lambda: Head.from_arrays(load_file(str(art.weights)))
    else:
        onnx_head = art.path / "model.fp32.onnx"
        if not onnx_head.is_file():
            raise ProbeError(f"{art.path} has neither {WEIGHTS_NAME} nor model.fp32.onnx: restore one or re-train")
        head = _head_from_onnx(onnx_head)
        digest, load = hashlib.sha256(head_bytes(head)).hexdigest(), lambda: head
    if digest != art.meta.get("weights_sha256"):
        raise ProbeError(f"the head in {art.path} does not match the hash in mai.json: restore it or re-train")
    return load()
