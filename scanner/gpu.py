"""The GPU scan path: nvJPEG decode, the spec's resizing on the device, IO binding.

    reader threads   read the file, sniff it, check the header (pixel limit, EXIF
                     orientation, provenance): a JPEG comes back as its bytes,
                     with no pixel decoded on the CPU (`scanner.decode.read_chunk`)
    a GPU thread     per batch: `torchvision.io.decode_jpeg(list, device="cuda")`
                     (nvJPEG) -> EXIF turn, fit and every resize step of the spec
                     on the device (`mai.preprocess_torch`, Pillow's own weights)
                     -> one uint8 NHWC tensor -> ONNX Runtime CUDA through IO
                     binding (`OnnxModel.predict_bound`): the pixels never visit
                     host memory. Up to two batches are in its hands while the
                     main thread collects reads and writes records
    worker processes anything the GPU cannot take (PNG and other formats, CMYK
                     JPEGs, a JPEG without its end marker, one nvJPEG refuses),
                     with the CPU path's decoder; counted in `GpuStage.stats`

Scores match the CPU path run with `--no-draft` (full-size decode), up to the
two decoders' IDCT rounding; the CPU path's default DCT-scaled decode moves
scores by about 1e-3 (benchmarks/README.md).

torch and torchvision are imported only here and only when this path is chosen
(`choose`), never for a CPU scan. nvJPEG runs in this process: a decoder crash on
a hostile JPEG would end the scan (`--resume` continues it; `--decoder cpu`
keeps every pixel decode in worker processes).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mai.errors import MaiError
from mai.preprocess import PreprocessSpec, fit_box
from scanner.decode import Decoded

if TYPE_CHECKING:
    from scanner.engine import ScanModel

DECODERS = ("auto", "cpu", "gpu")
#: GPUs whose float64 runs at half the float32 rate (P100, V100, A100, H100/H200):
#: there the resize is Pillow's exactly; elsewhere float32, within one grey level.
_FULL_RATE_FP64 = {(6, 0), (7, 0), (8, 0), (9, 0)}
#: Pixels decoded by nvJPEG in one call, and resized in one stack: bounds GPU
#: memory whatever the batch size and image sizes.
DECODE_PIXELS = 256_000_000
RESIZE_PIXELS = 48_000_000


class GpuPathError(MaiError):
    """`--decoder gpu` asked for where the GPU path cannot run."""


def unavailable(model: ScanModel) -> str | None:
    """None when the GPU path can run with `model`, else why not (one phrase).

    Cheap checks first: with the model on the CPU, torch is never imported."""
    if getattr(model, "device", "cpu") != "cuda":
        return "the model runs on ONNX Runtime's CPU provider"
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return "torch and torchvision are not installed (pip install 'mai-detect[gpu]')"
    try:
        import torch
        import torchvision.io  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken torch install is a reason, not a crash
        return f"torch/torchvision do not import ({type(e).__name__}: {e})"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (a CPU-only torch build, or no driver)"
    return _probe_nvjpeg(torch)


def _probe_nvjpeg(torch: Any) -> str | None:
    """Decode one tiny JPEG on the GPU: a torchvision built without nvJPEG (or a
    broken CUDA install) shows here, once, instead of on every file of the scan."""
    import io

    import torchvision.io as tvio
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buf, "JPEG")
    try:
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        tvio.decode_jpeg([data], mode=tvio.ImageReadMode.RGB, device="cuda")
    except Exception as e:  # noqa: BLE001 - any failure means: not this path
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        return f"torchvision cannot decode JPEG on the GPU ({first})"
    return None


def choose(model: ScanModel, decoder: str, engine: str = "local") -> tuple[GpuStage | None, str | None]:
    """The `--decoder` rule: the GPU stage, or None and why the CPU decodes when
    that is worth saying (None when the model runs on the CPU anyway)."""
    if decoder not in DECODERS:
        raise GpuPathError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    if decoder == "cpu":
        return None, "--decoder cpu"
    if engine != "local":
        if decoder == "gpu":
            raise GpuPathError("--decoder gpu runs with --engine local only")
        return None, "the GPU decode path runs with --engine local only"
    why = unavailable(model)
    if why is not None:
        if decoder == "gpu":
            raise GpuPathError(f"--decoder gpu: the GPU path cannot run here: {why}; use --decoder cpu or auto")
        if getattr(model, "device", "cpu") == "cuda":
            return None, f"model on CUDA, GPU decode off: {why}"
        return None, None
    return GpuStage(model.spec, device="cuda"), None


# EXIF orientation -> the moves that make a stored (H, W, C) image upright, as
# Pillow's ImageOps.exif_transpose does: "t" swaps the axes, "v" flips rows
# (top-bottom), "h" flips columns (left-right), applied in order.
ORIENTATION_MOVES: dict[int, str] = {1: "", 2: "h", 3: "vh", 4: "v", 5: "t", 6: "th", 7: "tvh", 8: "tv"}


def upright(x: Any, orientation: int) -> Any:
    """Turn one HWC tensor (torch) upright by its EXIF orientation."""
    for move in ORIENTATION_MOVES.get(orientation, ""):
        x = x.transpose(0, 1) if move == "t" else x.flip(0 if move == "v" else 1)
    return x


@dataclass
class DecodeStats:
    """Which decoder each scored file went through, for the summary."""

    gpu: int = 0
    cpu: Counter = field(default_factory=Counter)  # reason -> files
    refusals: list[str] = field(default_factory=list)  # the first few "path: nvJPEG's message"

    def lines(self) -> list[str]:
        total = sum(self.cpu.values())
        text = f"decode: {self.gpu:,} on the GPU (nvJPEG), {total:,} sent to the CPU decoder"
        if total:
            text += " (" + ", ".join(f"{why}: {n:,}" for why, n in self.cpu.most_common()) + ")"
        return [text, *(f"  nvJPEG refused {r}" for r in self.refusals)]


class GpuStage:
    """Decode, preprocess and score one batch on a GPU (the local engine's `infer` hook).

    `device` is a torch device; tests run the same host-side logic with "cpu"
    (torchvision's CPU JPEG decoder stands in for nvJPEG there)."""

    name = "gpu"

    def __init__(self, spec: PreprocessSpec, device: str = "cuda", dtype: Any = None) -> None:
        import torch
        import torchvision
        import torchvision.io

        self.torch, self.tvio = torch, torchvision.io
        self.spec = spec
        self.device = torch.device(device)
        if dtype is None:
            exact = self.device.type != "cuda" or torch.cuda.get_device_capability(self.device) in _FULL_RATE_FP64
            dtype = torch.float64 if exact else torch.float32
        self.dtype = dtype
        self.stats = DecodeStats()
        self.versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"

    def describe(self) -> str:
        where = self.torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else str(self.device)
        exact = "exact" if self.dtype == self.torch.float64 else "float32"
        return f"GPU (nvJPEG on {where}, resize on the device, {exact}; {self.versions})"

    # -- the engine's hook --------------------------------------------------
    def infer(self, decoded: list[Decoded], model: ScanModel, keep_arrays: bool = False) -> dict[int, float]:
        """Score the usable entries of `decoded`; returns {index: P(synthetic)}.

        An entry nvJPEG refuses gets `cpu` set to why, and no score: the engine
        sends it to the CPU decoder. With `keep_arrays`, every scored entry gets
        its model-input array in host memory (a second opinion needs it)."""
        torch = self.torch
        pending = [i for i, d in enumerate(decoded) if d.error is None and d.jpeg is not None]
        on_device = self._decode(decoded, pending) if pending else {}
        host = [i for i, d in enumerate(decoded) if d.error is None and d.array is not None and i not in on_device]
        if not on_device and not host:
            return {}
        parts = []
        if host:
            parts.append((host, torch.from_numpy(np.stack([decoded[i].array for i in host])).to(self.device)))
        if on_device:
            idx = sorted(on_device)
            parts.append((idx, torch.stack([on_device[i] for i in idx])))
        index = [i for ids, _ in parts for i in ids]
        batch = torch.cat([t for _, t in parts]).contiguous() if len(parts) > 1 else parts[0][1].contiguous()
        if self.device.type == "cuda":
            # ONNX Runtime reads the tensor on its own stream: torch's work must be done.
            torch.cuda.current_stream(self.device).synchronize()
        _, prob = model.predict_bound(batch.data_ptr(), tuple(batch.shape), self.device.type,
                                      self.device.index or 0)
        if keep_arrays:
            arrays = batch.cpu().numpy()
            for k, i in enumerate(index):
                if decoded[i].array is None:
                    decoded[i].array = arrays[k]
        del batch
        return {i: float(p) for i, p in zip(index, prob, strict=True)}

    # -- decoding -------------------------------------------------------------
    def _decode(self, decoded: list[Decoded], pending: list[int]) -> dict[int, Any]:
        """nvJPEG-decode and preprocess `pending`: {index: uint8 HWC tensor at the
        model's input size}; a refused file gets `cpu` set instead."""
        out: dict[int, Any] = {}
        refused: dict[int, str] = {}
        for group in _chunks(pending, [decoded[i].facts.get("width", 1) * decoded[i].facts.get("height", 1)
                                       for i in pending], DECODE_PIXELS):
            out.update(self._preprocess(decoded, self._nvjpeg(decoded, group, refused)))
        for i in pending:
            decoded[i].jpeg = None  # the bytes are no longer needed: free them now
        for i, why in refused.items():
            decoded[i].cpu = "nvJPEG refused it"
            if len(self.stats.refusals) < 3:
                self.stats.refusals.append(f"{decoded[i].path}: {why}")
        self.stats.gpu += len(out)
        return out

    def _nvjpeg(self, decoded: list[Decoded], group: list[int], refused: dict[int, str]) -> dict[int, Any]:
        torch, tvio = self.torch, self.tvio
        data = [torch.frombuffer(decoded[i].jpeg, dtype=torch.uint8) for i in group]  # type: ignore[arg-type]
        try:
            images = tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, device=self.device)
            return dict(zip(group, images, strict=True))
        except Exception:  # noqa: BLE001 - one bad file fails the whole batched call: retry one by one
            pass
        got: dict[int, Any] = {}
        for i, t in zip(group, data, strict=True):
            try:
                got[i] = tvio.decode_jpeg(t, mode=tvio.ImageReadMode.RGB, device=self.device)
            except Exception as e:  # noqa: BLE001 - whatever nvJPEG raises, the CPU decoder gets the file
                refused[i] = (str(e).strip().splitlines() or [type(e).__name__])[0][:80]
        return got

    def _preprocess(self, decoded: list[Decoded], images: dict[int, Any]) -> dict[int, Any]:
        """CHW decoder output -> upright HWC -> fit -> resize steps, same-shaped
        images stacked so a folder of one camera's photos resizes in few calls."""
        from mai.preprocess_torch import resize_steps

        spec = self.spec
        shaped: dict[tuple[int, int], list[tuple[int, Any]]] = {}
        for i, chw in images.items():
            x = chw.permute(1, 2, 0)
            if spec.exif_transpose:
                x = upright(x, decoded[i].orientation)
            left, top, right, bottom = fit_box((x.shape[1], x.shape[0]), spec.fit, spec.steps[0].size)
            x = x[top:bottom, left:right]
            shaped.setdefault((x.shape[0], x.shape[1]), []).append((i, x))
        out: dict[int, Any] = {}
        for (h, w), items in shaped.items():
            for part in _chunks(items, [h * w] * len(items), RESIZE_PIXELS):
                ys = resize_steps(self.torch.stack([x for _, x in part]), spec.steps, dtype=self.dtype)
                out.update({i: y for (i, _), y in zip(part, ys, strict=True)})
        return out


def _chunks(items: Sequence[Any], sizes: Sequence[int], budget: int) -> list[list[Any]]:
    """Split `items` in order into runs whose `sizes` sum to at most `budget`
    (an item larger than the budget runs alone)."""
    runs: list[list[Any]] = []
    run: list[Any] = []
    total = 0
    for item, size in zip(items, sizes, strict=True):
        if run and total + size > budget:
            runs.append(run)
            run, total = [], 0
        run.append(item)
        total += size
    if run:
        runs.append(run)
    return runs
