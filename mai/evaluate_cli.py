"""`mai eval`: score a labelled data set with a model and report."""

from __future__ import annotations

import random
from typing import Any

from mai.artifact import load_artifact, load_torch_model
from mai.data import open_dataset
from mai.errors import MaiError
from mai.evaluate import jpeg_reencoder, report, score_items


def require_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MaiError(f"{what} needs torch: pip install 'mai-detect[train]'") from None


def run_eval(model_path: str | None, data: str, split: str = "all", limit: int | None = None,
             batch_size: int = 128, device: str = "auto", jpeg_quality: int | None = None) -> dict[str, Any]:
    require_torch("mai eval")
    import torch

    art = load_artifact(model_path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise MaiError("--device cuda: torch sees no CUDA device here; use --device cpu")
    model = load_torch_model(art).to(device)
    ds = open_dataset(data)
    items = ds.split(split)
    if limit and len(items) > limit:
        items = sorted(random.Random(0).sample(items, limit), key=lambda i: i.relpath)
    perturb = jpeg_reencoder(jpeg_quality) if jpeg_quality else None
    scored = score_items(model, ds, items, art.spec, batch_size=batch_size, device=device, perturb=perturb)
    rep = report(scored, art.threshold, art.uncertain)
    return {
        "model": art.model_id, "data": str(data), "split": split, "jpeg_quality": jpeg_quality,
        "fingerprint": ds.fingerprint(),
        "uncertain": list(art.uncertain), "calibration": art.meta.get("calibration"),
        "unreadable_items": [{"path": p, "error": e} for p, e in scored.unreadable], **rep,
    }


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_report(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from mai.ui import stderr_console

    out = Console(no_color=stderr_console().no_color, highlight=False)
    jq = f", re-encoded as JPEG q{rep['jpeg_quality']}" if rep.get("jpeg_quality") else ""
    out.print(f"model {rep['model']}  data {rep['data']} (split {rep['split']}{jq})  "
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
