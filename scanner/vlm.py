"""The scanner's adapter for the VLM as its second opinion (`mai-scan --vlm BASE [--vlm-adapter ADAPTER]`).

`VLMOpinion` fits `scanner.engine.SecondOpinion`: the engine hands it the
files of a batch that the CNN left inside its uncertainty band (and metadata
did not decide), and it returns P(synthetic) = P(Yes) for each, batched
through `VLMScorer`. The VLM sees the file itself, re-read at up to
`mai.vlm.MAX_SIDE` pixels (not the CNN's small input array, which for a
CIFAKE-style model is a 32x32 thumbnail); a file that cannot be re-read (gone
since) falls back to that array. It counts the images it scored and the time
spent, for the scan summary.
"""

from __future__ import annotations

import time
from typing import Any

from mai.vlm import VLMScorer


class VLMOpinion:
    """A `SecondOpinion` backed by a `VLMScorer`."""

    def __init__(self, scorer: VLMScorer, read_files: bool = True) -> None:
        self.scorer = scorer
        self.name = f"vlm:{scorer.model_id}"
        self.model_id = scorer.model_id
        self.threshold = scorer.threshold
        self.read_files = read_files
        self.images = 0
        self.batches = 0
        self.seconds = 0.0
        self.load_seconds = 0.0

    @classmethod
    def load(cls, base: str | None, adapter: str | None = None, trust_remote_code: bool = False,
             device: str = "auto", batch_size: int = 8) -> VLMOpinion:
        t0 = time.monotonic()
        op = cls(VLMScorer(base, adapter, trust_remote_code=trust_remote_code, device=device,
                           batch_size=batch_size))
        op.load_seconds = time.monotonic() - t0
        return op

    def _image(self, path: str, array: Any) -> Any:
        from mai.vlm.images import as_rgb, open_image

        if self.read_files:
            try:
                return open_image(path)
            except Exception:  # noqa: BLE001 - vanished or changed since decoding: use what the CNN saw
                pass
        return as_rgb(array)

    def score(self, images: list[Any], paths: list[str]) -> list[float]:
        t0 = time.monotonic()
        pil = [self._image(p, a) for a, p in zip(images, paths, strict=True)]
        out = self.scorer.score(pil)
        self.seconds += time.monotonic() - t0
        self.images += len(pil)
        self.batches += 1
        return out

    def describe(self) -> str:
        s = self.scorer
        adapter = f" + adapter {s.adapter}" if s.adapter is not None else " (no adapter: zero-shot, threshold 0.5)"
        return f"{s.base_path.name}{adapter} on {s.device}"

    def summary_line(self) -> str:
        """One line for the scan summary: how many images went to the VLM and how long it took."""
        rate = f", {self.images / self.seconds:.2f} images/s" if self.seconds > 0 and self.images else ""
        return (f"vlm: {self.images:,} uncertain images sent to {self.model_id} in {self.batches:,} batches, "
                f"{self.seconds:.1f} s{rate} (model loaded in {self.load_seconds:.1f} s)")
