"""The VLM second opinion: a small vision-language model asked "Is this image AI-generated?".

One interface, `VLMScorer(base_dir, adapter=None).score(images) -> [P(Yes)]`:
the probability of the answer "Yes" against "No", read from the model's own
next-token logits after the question (a softmax over those two tokens' logits).
Bases load from local folders only (`mai.vlm.load`); a LoRA adapter trained by
`mai train vlm` (`mai_train.vlm.train`) is a folder with peft's `adapter_config.json`
and `adapter_model.safetensors` beside a `mai.json` of schema `mai.vlm/1`.

This module imports no torch, transformers or peft: they load when a scorer is
built, so the scanner's command line stays light.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from mai.artifact import CardKind, card_folder, read_card, sha256_file
from mai.errors import MaiError

QUESTION = "Is this image AI-generated?"
ANSWER_YES, ANSWER_NO = "Yes.", "No."
SCHEMA = "mai.vlm/1"
ADAPTER_CONFIG = "adapter_config.json"
#: Longest side of the image handed to a VLM's processor (SmolVLM's own limit is
#: 4 x 512 = 2048 with image splitting; moondream resizes to 378).
MAX_SIDE = 2048


class VLMError(MaiError, ValueError):
    """A VLM base, adapter or option that cannot be used; the message says why and what to do."""


ADAPTER_CARD = CardKind(SCHEMA, ("model_id", "base", "question", "threshold", "answer_token_ids"),
                        "a MAI VLM adapter", "re-create the adapter with `mai train vlm`", VLMError)


def is_vlm_adapter(path: str | os.PathLike[str] | None) -> bool:
    """Whether `path` is a VLM adapter folder (its mai.json has schema mai.vlm/1). Torch-free."""
    if path is None:
        return False
    try:  # the schema decides: a broken adapter is still one, and read_adapter_meta says what is wrong
        read_card(card_folder(path), dataclasses.replace(ADAPTER_CARD, required=()))
    except VLMError:
        return False
    return True


def read_adapter_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The adapter's mai.json, checked. Raises `VLMError` with what to do."""
    p = card_folder(path)
    if not p.is_dir():
        raise VLMError(f"VLM adapter folder not found: {p}; train one with `mai train vlm --out {p}`")
    hint = " (a peft adapter without MAI's calibration: train it with `mai train vlm`)" \
        if (p / ADAPTER_CONFIG).is_file() else ""
    meta = read_card(p, ADAPTER_CARD, hint)
    if not (p / ADAPTER_CONFIG).is_file():
        raise VLMError(f"{p} has no {ADAPTER_CONFIG}: the adapter weights are missing; re-train it")
    return meta


class VLMScorer:
    """A base VLM from a local folder, optionally with a MAI LoRA adapter.

    `score(images)` gives P(Yes) for each PIL image, in order: the softmax over
    the next-token logits of the first token of "Yes." and of "No." after the
    question (`backend.yes_id`, `backend.no_id`, as the base's tokenizer writes
    them after the prompt). With an adapter, `threshold` and `uncertain` are the
    ones calibrated on validation data; without one, 0.5 and no band.
    """

    def __init__(self, base_dir: str | os.PathLike[str] | None, adapter: str | os.PathLike[str] | None = None,
                 trust_remote_code: bool = False, device: str = "auto", batch_size: int = 8,
                 dtype: str | None = None, question: str | None = None) -> None:
        from mai.vlm.load import check_base, load_base

        self.meta: dict[str, Any] | None = read_adapter_meta(adapter) if adapter is not None else None
        if base_dir is None:
            if self.meta is None:
                raise VLMError("a VLM needs a base model folder")
            base_dir = self.meta["base"].get("path")
        self.batch_size = max(1, int(batch_size))
        opts = (self.meta or {}).get("options", {})
        q = question or (self.meta or {}).get("question") or QUESTION
        path, cfg = check_base(base_dir, trust_remote_code)
        if self.meta is not None:
            _check_base_matches(self.meta, path, cfg, adapter)
        self.backend = load_base(path, trust_remote_code, device, dtype, q, opts.get("image_splitting"))
        self.base_path = path
        self.adapter = Path(adapter) if adapter is not None else None
        if self.meta is not None:
            self._attach(Path(adapter))  # type: ignore[arg-type]
        self.question = q

    def _attach(self, adapter: Path) -> None:
        from peft import PeftModel

        want = self.meta["answer_token_ids"] if self.meta else {}
        got = self.backend.answer_tokens()
        if (want.get("yes"), want.get("no")) != (got["yes"], got["no"]):
            raise VLMError(f"{adapter} was trained reading tokens {want.get('yes')}/{want.get('no')} for Yes/No, "
                           f"but this base's tokenizer gives {got['yes']}/{got['no']}: not the base it was trained on")
        try:
            self.peft = PeftModel.from_pretrained(self.backend.model, str(adapter), is_trainable=False)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise VLMError(f"cannot apply the adapter {adapter} to {self.base_path}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
        self.peft.eval()

    @property
    def model_id(self) -> str:
        if self.meta is not None:
            return str(self.meta["model_id"])
        return f"{self.base_path.name}@{sha256_file(self.base_path / 'config.json')[:8]}"

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"]) if self.meta else 0.5

    @property
    def uncertain(self) -> tuple[float, float]:
        if self.meta and self.meta.get("uncertain"):
            lo, hi = self.meta["uncertain"]
            return float(lo), float(hi)
        return self.threshold, self.threshold

    @property
    def device(self) -> str:
        return self.backend.device

    def score(self, images: list[Any]) -> list[float]:
        """P(Yes) for each image (PIL images, any mode and size), in batches."""
        from mai.vlm.images import as_rgb

        out: list[float] = []
        for i in range(0, len(images), self.batch_size):
            chunk = [as_rgb(im) for im in images[i : i + self.batch_size]]
            out.extend(self.backend.p_yes(chunk))
        return out

    def caption(self, images: list[Any], prompt: str = "Describe this image in one sentence.",
                max_new_tokens: int = 48) -> list[str]:
        """Greedy answers to `prompt` (the pairing step's captions)."""
        from mai.vlm.images import as_rgb

        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            chunk = [as_rgb(im) for im in images[i : i + self.batch_size]]
            out.extend(self.backend.generate(chunk, prompt, max_new_tokens))
        return out


def _check_base_matches(meta: dict[str, Any], path: Path, cfg: dict[str, Any], adapter: Any) -> None:
    want = meta["base"].get("config_sha256")
    got = sha256_file(path / "config.json")
    if want and want != got:
        raise VLMError(f"{adapter} was trained on the base {meta['base'].get('name')!r} "
                       f"(config sha256 {want[:12]}), but {path} has config sha256 {got[:12]}: "
                       "give the base it was trained on")


__all__ = ["ANSWER_NO", "ANSWER_YES", "MAX_SIDE", "QUESTION", "SCHEMA", "VLMError", "VLMScorer",
           "is_vlm_adapter", "read_adapter_meta"]
