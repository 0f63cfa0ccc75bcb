"""Paired data: `mai data pair` captions real images with the VLM and generates a twin of each.

For every real image: the VLM describes it in one sentence, a text-to-image
`Generator` draws that description (seeded), and both are written side by side:

    OUT/real/000003_beach.jpg   the real image, centre-cropped and resized to the twin's size
    OUT/fake/000003_beach.jpg   its generated twin
    OUT/pairs.jsonl             one line a pair: caption, seed, generator, source file
    OUT/manifest.csv            path,label,source  (what `--data OUT/manifest.csv` reads)

Choices, against shortcuts a detector would otherwise learn (NOTES: format
bias): both images of a pair get the same size and the same encoding (JPEG at
quality 90 by default, or PNG), so neither format nor size tells them apart.
Both rows carry the generator's name as their source (one family, both
classes, as GenImage does), and the twins' names are chosen so both fall on the
same side of the hash split (`mai_train.data.is_val`): validation never holds the
twin of a training image.

A re-run continues: pairs already listed in pairs.jsonl are skipped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image, ImageOps

from mai.vlm import VLMError
from mai_train.data import IMAGE_SUFFIXES, is_val

CAPTION_PROMPT = "Describe this image in one sentence."


@runtime_checkable
class Generator(Protocol):
    """A text-to-image model: `generate(prompt, seed)` returns one PIL image."""

    name: str

    def generate(self, prompt: str, seed: int) -> Image.Image: ...


class DiffusersGenerator:
    """A diffusers text-to-image pipeline from a local folder (the `pair` extra).

    The folder is what `huggingface-cli download REPO --local-dir DIR` writes
    for a diffusers model (it has `model_index.json`), e.g.
    `stabilityai/sdxl-turbo` (1-4 steps, guidance 0) or
    `stable-diffusion-v1-5/stable-diffusion-v1-5` (about 30 steps, guidance 7.5).
    """

    def __init__(self, path: str | os.PathLike[str], device: str = "auto", steps: int | None = None,
                 guidance: float | None = None, size: tuple[int, int] | None = None) -> None:
        p = Path(path).expanduser()
        if not (p / "model_index.json").is_file():
            what = "not found" if not p.exists() else "not a diffusers pipeline folder (no model_index.json)"
            raise VLMError(f"text-to-image model {p}: {what}; download one there, e.g. "
                           f"`huggingface-cli download stabilityai/sdxl-turbo --local-dir {p}`. "
                           "MAI never downloads weights itself")
        try:
            import torch
            from diffusers import DiffusionPipeline
        except ImportError:
            raise VLMError("mai data pair with a diffusers model needs diffusers: "
                           "pip install 'mai-detect[pair]'") from None
        from mai.torch_host import torch_device

        self.device = torch_device(device)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        try:
            self.pipe = DiffusionPipeline.from_pretrained(str(p), local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError) as e:
            raise VLMError(f"cannot load the diffusers pipeline in {p}: {str(e).splitlines()[0]}") from e
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.name = p.name
        self.steps, self.guidance, self.size = steps, guidance, size

    def generate(self, prompt: str, seed: int) -> Image.Image:
        import torch

        g = torch.Generator(device=self.device).manual_seed(seed)
        kw: dict[str, Any] = {}
        if self.steps is not None:
            kw["num_inference_steps"] = self.steps
        if self.guidance is not None:
            kw["guidance_scale"] = self.guidance
        if self.size is not None:
            kw["width"], kw["height"] = self.size
        return self.pipe(prompt, generator=g, **kw).images[0]


@dataclass
class PairOptions:
    limit: int | None = None
    seed: int = 0
    fmt: str = "jpeg"  # jpeg or png, both images of a pair alike
    quality: int = 90
    batch_size: int = 4
    caption_prompt: str = CAPTION_PROMPT


def list_images(root: Path) -> list[Path]:
    """Image files under `root` (a folder, walked in sorted order, hidden names skipped), or `root` itself."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise VLMError(f"--real {root}: no such folder")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath) / f)
    return out


def clean_caption(text: str, limit: int = 300) -> str:
    t = re.sub(r"\s+", " ", "".join(c if c.isprintable() else " " for c in text)).strip()
    return t[:limit] or "a photograph"


def twin_stem(k: int, src: Path, ext: str) -> str:
    """A name for pair k whose real/ and fake/ paths fall on the same side of the hash split."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", src.stem).strip("-")[:40] or "image"
    for salt in range(1000):
        stem = f"{k:06d}_{base}" + (f"_{salt}" if salt else "")
        if is_val(f"real/{stem}.{ext}") == is_val(f"fake/{stem}.{ext}"):
            return stem
    return f"{k:06d}_{base}"  # pragma: no cover - 2**-1000


def match_to(real: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The real image centre-cropped to the twin's aspect and resized to its size."""
    return ImageOps.fit(real, size, Image.Resampling.LANCZOS)


def encode(im: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    im = im.convert("RGB")
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        im.save(buf, "PNG")
    else:
        raise VLMError(f"unknown pair format {fmt!r}; use jpeg or png")
    return buf.getvalue()


def _done(pairs_path: Path) -> Iterator[dict[str, Any]]:
    if not pairs_path.is_file():
        return
    for line in pairs_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a killed run: that pair is made again


def write_manifest(out: Path) -> Path:
    rows = list(_done(out / "pairs.jsonl"))
    tmp = out / "manifest.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "source"])
        for r in rows:
            if (out / r["real"]).is_file() and (out / r["fake"]).is_file():
                w.writerow([r["real"], "real", r["generator"]])
                w.writerow([r["fake"], "fake", r["generator"]])
    os.replace(tmp, out / "manifest.csv")
    return out / "manifest.csv"


def make_pairs(real: str | os.PathLike[str], out: str | os.PathLike[str],
               captioner: Callable[[list[Image.Image]], list[str]], generator: Generator,
               options: PairOptions | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Caption, generate and write pairs; returns the manifest's path."""
    from mai.vlm.images import open_image

    opts = options or PairOptions()
    if opts.fmt not in ("jpeg", "png"):
        raise VLMError(f"unknown pair format {opts.fmt!r}; use jpeg or png")
    root, dest = Path(real), Path(out)
    sources = list_images(root)
    if not sources:
        raise VLMError(f"--real {root}: no images there")
    if opts.limit:
        sources = sources[: opts.limit]
    (dest / "real").mkdir(parents=True, exist_ok=True)
    (dest / "fake").mkdir(parents=True, exist_ok=True)
    pairs_path = dest / "pairs.jsonl"
    done = {r.get("source") for r in _done(pairs_path)}
    ext = "jpg" if opts.fmt == "jpeg" else "png"
    todo = [(k, s) for k, s in enumerate(sources) if _rel(s, root) not in done]
    say = log or (lambda _t: None)
    say(f"pairing {len(todo)} real images from {root} ({len(sources) - len(todo)} done before) with {generator.name}")
    made = 0
    with open(pairs_path, "a", encoding="utf-8") as pj:
        for i in range(0, len(todo), opts.batch_size):
            chunk = todo[i : i + opts.batch_size]
            images, keep = [], []
            for k, src in chunk:
                try:
                    images.append(open_image(src))
                    keep.append((k, src))
                except Exception as e:  # noqa: BLE001 - an unreadable real image is skipped, and said
                    say(f"skipping {src}: {type(e).__name__}: {e}")
            if not images:
                continue
            captions = captioner(images)
            for (k, src), im, cap in zip(keep, images, captions, strict=True):
                prompt = clean_caption(cap)
                seed = opts.seed + k
                fake = generator.generate(prompt, seed)
                stem = twin_stem(k, src, ext)
                rpath, fpath = f"real/{stem}.{ext}", f"fake/{stem}.{ext}"
                (dest / fpath).write_bytes(encode(fake, opts.fmt, opts.quality))
                (dest / rpath).write_bytes(encode(match_to(im, fake.size), opts.fmt, opts.quality))
                pj.write(json.dumps({"real": rpath, "fake": fpath, "source": _rel(src, root), "caption": prompt,
                                     "seed": seed, "generator": generator.name, "size": list(fake.size)},
                                    ensure_ascii=False) + "\n")
                pj.flush()
                made += 1
            say(f"{made}/{len(todo)} pairs")
    return write_manifest(dest)


def _rel(p: Path, root: Path) -> str:
    return p.name if root.is_file() else p.relative_to(root).as_posix()
