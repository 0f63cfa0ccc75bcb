"""What `mai eval` does (its Click command is in `mai_train.cli`): score a labelled
data set with any model the way it runs, and report (`run_eval`, `print_report`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from mai.artifact import load_artifact
from mai.errors import MaiError
from mai.torch_host import torch_device
from mai_train.checkpoint import load_torch_model
from mai_train.data import FAKE, DataSet, Item, open_dataset
from mai_train.evaluate import Scored, jpeg_reencoder, map_items, report, score_torch_items


def require_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MaiError(f"{what} needs torch: pip install 'mai-detect[train]'") from None


def eval_items(ds: DataSet, split: str, real_split: str | None = None, limit: int | None = None) -> list[Item]:
    """The items `mai eval` scores: a split, or its fakes with another split's reals."""
    items = ds.split(split)
    if real_split:
        reals = [it for it in ds.split(real_split) if it.label != FAKE]
        items = sorted([it for it in items if it.label == FAKE] + reals, key=lambda i: i.relpath)
    if limit and len(items) > limit:
        items = sorted(random.Random(0).sample(items, limit), key=lambda i: i.relpath)
    return items


@dataclass(frozen=True)
class EvalRequest:
    """One `mai eval`: which model, on which data, scored how (the command's flags)."""

    model_path: str | None
    data: str
    split: str = "all"
    real_split: str | None = None  # take the reals from this split instead
    limit: int | None = None
    batch_size: int = 128
    device: str = "auto"
    jpeg_quality: int | None = None  # re-encode every image at this quality first
    perturb: str | None = None  # process every image first (mai_train.augment.PERTURBATIONS)
    cache: bool = True  # probes on the CPU: score from the feature cache (fp32 only: it holds fp32 features)
    precision: str = "fp32"  # the ONNX pair's: fp32 (the reference), or int8/fp16 as mai-scan may run it
    base: str | None = None  # VLM adapters: the base folder (default: the one in its mai.json)
    trust_remote_code: bool = False


def run_eval(req: EvalRequest) -> dict[str, Any]:
    """`mai eval`: any model (a torch artifact, a probe through its ONNX pair, or a
    VLM adapter with its base) scored on `items` the way it runs, one report."""
    from mai.vlm import VLMScorer, is_vlm_adapter

    # The model first: a wrong --model is the likelier mistake, and says so before any data is read.
    scorer = art = None
    batch_size = req.batch_size
    if is_vlm_adapter(req.model_path):  # a LoRA adapter from `mai train vlm`
        batch_size = min(batch_size, 16)
        scorer = VLMScorer(req.base, req.model_path, trust_remote_code=req.trust_remote_code, device=req.device,
                           batch_size=batch_size)
        card = {"model": scorer.model_id, "kind": "vlm", "base": str(scorer.base_path)}
        threshold, band, calibration = scorer.threshold, scorer.uncertain, (scorer.meta or {}).get("calibration")
    else:
        art = load_artifact(req.model_path)
        card = {"model": art.model_id}
        threshold, band, calibration = art.threshold, art.uncertain, art.meta.get("calibration")
    ds = open_dataset(req.data)
    items = eval_items(ds, req.split, req.real_split, req.limit)
    if req.perturb and req.jpeg_quality:
        raise MaiError("--perturb and --jpeg-quality both process the images: give one")
    perturb_name = req.perturb or (f"jpeg{req.jpeg_quality}" if req.jpeg_quality in (50, 75) else None)
    from mai_train.augment import PERTURBATIONS

    perturb = (PERTURBATIONS[perturb_name] if perturb_name
               else jpeg_reencoder(req.jpeg_quality) if req.jpeg_quality else None)
    on_cpu = req.device == "cpu" or (req.device == "auto" and not _cuda_usable())
    if scorer is None and req.cache and on_cpu and req.precision == "fp32" and \
            art.meta["architecture"]["name"] == "probe" and (perturb_name or not req.jpeg_quality):
        scored = score_probe_cached(art, ds, items, perturb_name)
    elif scorer is not None:
        from mai_train.vlm.evaluate import score_vlm_items

        scored = score_vlm_items(scorer.score, ds, items, batch_size=batch_size, perturb=perturb)
    elif art.meta["architecture"]["name"] == "probe" or not art.weights.is_file():
        # A probe has no torch module; a shipped CNN ships as ONNX only (mai/pretrained).
        scored = score_onnx_items(art, ds, items, req.device, batch_size, perturb, req.precision)
    else:
        require_torch("mai eval")
        dev = torch_device(req.device)
        model = load_torch_model(art).to(dev)
        scored = score_torch_items(model, ds, items, art.spec, batch_size=batch_size, device=dev, perturb=perturb)
    return {
        **card, "precision": req.precision, "data": str(req.data), "split": req.split, "real_split": req.real_split,
        "jpeg_quality": req.jpeg_quality, "perturb": perturb_name,
        "fingerprint": ds.fingerprint(), "uncertain": list(band), "calibration": calibration,
        "unreadable_items": [{"path": p, "error": e} for p, e in scored.unreadable],
        **report(scored, threshold, band),
    }


def _cuda_usable() -> bool:
    import onnxruntime as ort

    from mai.session import gpu_providers

    return bool(gpu_providers(ort)[0])


def score_probe_cached(art: Any, ds: DataSet, items: list[Item], perturb: str | None) -> Scored:
    """A probe scored from the feature cache (`mai_train.train_probe.cached_features`:
    the same feature graph and preprocessing as a scan, features computed once per
    data set, items and perturbation) and its head, which `mai export` proves equal
    to the ONNX head within 1e-4."""
    from mai.backbone import get_backbone
    from mai.console import stderr_console
    from mai_train.train_probe import cached_features, load_head

    console = stderr_console()
    bb = get_backbone(art.meta["backbone"]["name"])
    f = cached_features(bb, ds, items, art.spec, None, 16, perturb=perturb,
                        log=lambda line: console.print(line, markup=False, highlight=False))
    feature = art.meta["architecture"]["args"]["feature"]
    return Scored(load_head(art).prob(f.feats[feature]), f.labels, f.sources, f.relpaths, f.unreadable)


def score_onnx_items(art: Any, ds: DataSet, items: list[Item], device: str, batch_size: int,
                     perturb: Any, precision: str | None = "fp32") -> Scored:
    """Score with the model's ONNX files, as mai-scan runs them (probes and shipped models have no torch
    weights), in `precision` (None: mai-scan's rule for the device)."""
    from mai.session import open_model

    model = open_model(art.path, device, precision=precision)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"prob": model.predict(x)[1]}

    return map_items(run, ds, items, model.spec, min(batch_size, 32), perturb=perturb).scored()


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_report(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from mai.console import stderr_console

    out = Console(no_color=stderr_console().no_color, highlight=False)
    jq = f", re-encoded as JPEG q{rep['jpeg_quality']}" if rep.get("jpeg_quality") else ""
    reals = f", reals from {rep['real_split']}" if rep.get("real_split") else ""
    out.print(f"model {rep['model']}  data {rep['data']} (split {rep['split']}{reals}{jq})  "
              f"threshold {rep['threshold']:.4f}  "
              f"uncertain band [{rep['uncertain'][0]:.4f}, {rep['uncertain'][1]:.4f}]")
    t = Table("source", "n", "real", "fake", "acc", "bal acc", "AUC", "AP", "TPR", "FPR")
    rows = list(rep["per_source"].items())
    if len(rows) > 1 or not rows:
        rows.append(("all", rep))
    for name, r in rows:
        t.add_row(name, *(_f(r[k]) for k in ("n", "real", "fake", "accuracy", "balanced_accuracy",
                                             "roc_auc", "average_precision", "tpr", "fpr")))
    out.print(t)
    if rep.get("uncertain_fraction") is not None:
        out.print(f"inside the uncertainty band: {rep['uncertain_fraction']:.1%}; accuracy outside it: "
                  f"{_f(rep.get('accuracy_outside_band'))}")
    if rep["unreadable"]:
        out.print(f"{rep['unreadable']} unreadable images skipped (see --json)")
