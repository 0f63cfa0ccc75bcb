"""A probe's export: its file is the head, always fp32 (proven against the numpy
head). Its fp16 part is the backbone's graph (`mai.backbone.feature_graph(...,
"fp16")`), which the scanner uses on CUDA: with fp32 and fp16 asked for, the head
is written and that graph built and proven, the pair against the fp32 pair,
through the scanner's own `open_model`. No torch involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.probe_head import export_head
from export.proof import TOLERANCE, ExportError, ExportResult, check_parity, max_diff, on_cuda, real_images
from mai.artifact import Artifact


def _check_precisions(precisions: tuple[str, ...]) -> None:
    if "int8" in precisions:
        raise ExportError("a probe's head is a few kB of fp32 weights: int8 is for storing a CNN; use --precision fp32")
    if "fp32" not in precisions:
        raise ExportError("a probe's head exports as fp32 only; its fp16 part is its backbone's graph: "
                          "--precision all writes the head and builds and proves that graph")


def export_probe(art: Artifact, precisions: tuple[str, ...], out_dir: Path, n_random: int,
                 seed: int) -> list[ExportResult]:
    """The head (fp32, against the numpy head) and, with fp16, the backbone's fp16
    graph, proven as the scanner runs it: the fp16 pair against the fp32 pair."""
    _check_precisions(precisions)
    out_dir.mkdir(parents=True, exist_ok=True)
    worst = export_head(art, out=out_dir)
    results = [ExportResult(out_dir / "model.fp32.onnx", "fp32", worst, 0.0, 64, 0, "the numpy head")]
    if "fp16" in precisions:
        results.append(_prove_fp16_backbone(art, out_dir, n_random, seed))
    return results


def _prove_fp16_backbone(art: Artifact, out_dir: Path, n_random: int, seed: int) -> ExportResult:
    from mai.backbone import cache_path, get_backbone
    from mai.session import open_model

    w, h = art.spec.input_size
    xs = [np.random.default_rng(seed).integers(0, 256, (n_random, h, w, 3), dtype=np.uint8), real_images(art)]
    fp32 = open_model(out_dir, device="cpu", precision="fp32")
    fp16 = open_model(out_dir, device="cpu", precision="fp16")
    wants = [fp32.predict(x)[1] for x in xs]
    d_random, d_real = (max_diff(fp16.predict(x)[1], want) for x, want in zip(xs, wants, strict=True))
    graph = cache_path(get_backbone(art.meta["backbone"]["name"]), "fp16")  # built by open_model above
    check_parity(graph.name, max(d_random, d_real), TOLERANCE["fp16"], " against the fp32 backbone")
    cuda = on_cuda(out_dir, xs, wants, precision="fp16")
    return ExportResult(graph, "fp16", d_random, d_real, len(xs[0]), len(xs[1]),
                        "the fp32 backbone, head fp32", cuda)
