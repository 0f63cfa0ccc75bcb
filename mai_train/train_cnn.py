"""Training a CNN detector: `mai train cnn`.

The host decodes each image, augments it, and runs the first preprocessing step
(for CIFAKE: 32x32); the device finishes the spec (`mai.preprocess_torch`) and
trains. The run folder holds `state.pt` (resumable at any checkpoint, mid-epoch
included) and, at the end, the artifact of the best epoch, calibrated on the
validation split.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from mai.errors import MaiError
from mai.preprocess import PreprocessSpec
from mai.torch_host import hardware, torch_device
from mai_train import metrics
from mai_train.checkpoint import STATE_NAME, load_state, save_artifact, versions
from mai_train.checkpoint import save_state as _atomic_save
from mai_train.data import DataSet, open_dataset
from mai_train.evaluate import calibrate, decode_item, jpeg_reencoder, score_torch_items

OPTIMIZERS = ("rmsprop", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass
class Augment:
    """Training augmentations, drawn per image from a seeded generator.

    Defaults: flips and small translations, which keep every pixel value (the
    traces a detector reads survive them). JPEG re-compression and blur fight
    the format and sharpness shortcuts of mixed-source data; they are off by
    default for CIFAKE, whose two classes are both JPEGs of one size.
    """

    flip: float = 0.5
    shift: float = 0.125  # translate by up to this fraction of each side (reflect padding)
    jpeg: float = 0.0  # probability of re-encoding as JPEG
    jpeg_quality: tuple[int, int] = (60, 95)
    blur: float = 0.0  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 1.0)

    def __call__(self, im: Image.Image, rng: random.Random) -> Image.Image:
        if self.shift > 0:
            w, h = im.size
            dx = rng.randint(-int(w * self.shift), int(w * self.shift))
            dy = rng.randint(-int(h * self.shift), int(h * self.shift))
            if dx or dy:
                a = np.asarray(im)
                py, px = abs(dy), abs(dx)
                a = np.pad(a, ((py, py), (px, px), (0, 0)), mode="reflect")
                a = a[py + dy : py + dy + h, px + dx : px + dx + w]
                im = Image.fromarray(np.ascontiguousarray(a))
        if rng.random() < self.flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < self.blur:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(*self.blur_sigma)))
        if rng.random() < self.jpeg:
            im = jpeg_reencoder(rng.randint(*self.jpeg_quality))(im)
        return im


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "mai_cnn"
    name: str | None = None
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "rmsprop"
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    device: str = "auto"
    amp: bool = True
    limit: int | None = None  # use at most this many training images (quick runs)
    checkpoint_every: int = 200  # steps between resumable checkpoints
    select: str = "roc_auc"  # validation metric that picks the best epoch
    target_fpr: float | None = None
    band_precision: float = 0.98
    augment: Augment = field(default_factory=Augment)
    spec: dict[str, Any] | None = None  # default: the architecture's (mai_train.registry.default_spec)


class TrainError(MaiError, RuntimeError):
    """A training run that cannot start or go on; the message says why."""


class _Images:
    """torch Dataset over items: uint8 arrays at the first step's size."""

    def __init__(self, ds: DataSet, items: list, spec: PreprocessSpec, augment: Augment | None, seed: int) -> None:
        self.ds, self.items, self.spec, self.augment, self.seed = ds, items, spec, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, int]:
        it = self.items[i]
        aug = None
        if self.augment is not None:
            # Seeded by (seed, epoch, index): a resumed run draws the same.
            rng = random.Random(hash((self.seed, self.epoch, i)))
            aug = lambda im: self.augment(im, rng)  # noqa: E731
        try:
            return decode_item(self.ds, it, self.spec, upto=1, augment=aug), it.label
        except Exception:  # noqa: BLE001 - unreadable images are counted, not fatal
            return None, it.label


def _collate(batch: list) -> tuple[Any, Any, int]:
    import torch

    good = [(a, y) for a, y in batch if a is not None]
    bad = len(batch) - len(good)
    if not good:
        return None, None, bad
    x = torch.from_numpy(np.stack([a for a, _ in good]))
    y = torch.tensor([y for _, y in good], dtype=torch.float32)
    return x, y, bad


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _optimizer(cfg: TrainConfig, model: Any) -> Any:
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    other = [p for n, p in model.named_parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise TrainError(f"unknown optimizer {cfg.optimizer!r}; use one of {OPTIMIZERS}")


def keep_freed_memory() -> None:
    """Stop glibc from returning freed memory to the OS after every step.

    Each training step frees and re-allocates activations of hundreds of MB; by
    default glibc unmaps them, and faulting fresh pages back in cost a third of
    the step time on the project's 2-core machine (measured: 2.4 s -> 1.6 s a
    step at batch 64, system time 4.8 s -> 0.7 s over 6 steps).
    """
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 1 << 28)  # M_TOP_PAD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


@dataclass
class _Progress:
    """Where a run stands; saved with the weights at every checkpoint (mid-epoch included)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the best epoch so far: number, metric, weights
    epoch: int = 0
    step_in_epoch: int = 0
    bad_total: int = 0  # unreadable training images met
    wall: float = 0.0  # seconds spent training and validating

    @classmethod
    def resumed(cls, state: dict[str, Any]) -> _Progress:
        return cls(state["history"], state["best"], state["epoch"], state["step_in_epoch"],
                   state.get("bad", 0), state.get("wall", 0.0))


@dataclass
class _Running:
    """One epoch's running training loss and accuracy."""

    loss: float = 0.0
    correct: int = 0
    n: int = 0

    def mean(self, value: float) -> float | None:
        return value / max(self.n, 1) if self.n else None


def train_cnn(cfg: TrainConfig, log: Any = None) -> Path:
    """Train (or resume) a run; returns the artifact folder (= cfg.out)."""
    keep_freed_memory()
    return CnnRun(cfg, log).train()


class CnnRun:
    """One `mai train cnn` run: set up (or resume) from the run folder, train epoch
    by epoch with checkpoints, keep the best epoch, and write its artifact."""

    def __init__(self, cfg: TrainConfig, log: Any = None) -> None:
        import torch

        from mai_train.display import TrainDisplay
        from mai_train.registry import default_spec

        if cfg.spec is None:
            cfg.spec = default_spec(cfg.arch).to_dict()
        self.cfg, self.out = cfg, Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = load_state(self.out, asdict(cfg), ("arch", "epochs", "batch_size", "seed", "spec", "limit"),
                             TrainError)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch_device(cfg.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.spec = PreprocessSpec.from_dict(cfg.spec)
        self.ds = open_dataset(cfg.data)
        train_items, self.val_items = self._items()
        self._build(resumed)
        self.steps_per_epoch = len(train_items) // cfg.batch_size
        self.data = _Images(self.ds, train_items, self.spec, cfg.augment, cfg.seed)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.display = TrainDisplay(cfg.epochs, self.steps_per_epoch, log=log)
        if resumed:
            self.display.note(f"resuming at epoch {self.p.epoch + 1}, step {self.p.step_in_epoch}")
        self.display.note(f"{len(train_items)} training / {len(self.val_items)} validation images from "
                          f"{self.ds.root} ({self.ds.kind}); {cfg.arch} on {self.device}")

    def _items(self) -> tuple[list, list]:
        cfg, ds = self.cfg, self.ds
        train_items, val_items = ds.split("train"), ds.split("val")
        if cfg.limit:
            rng = random.Random(cfg.seed)
            train_items = rng.sample(train_items, min(cfg.limit, len(train_items)))
            val_items = rng.sample(val_items, min(max(cfg.limit // 5, 64), len(val_items)))
        if not train_items or not val_items:
            raise TrainError(f"{cfg.data}: the split ({ds.split_rule}) left {len(train_items)} training and "
                             f"{len(val_items)} validation images; add data")
        if len(train_items) // cfg.batch_size == 0:
            raise TrainError(f"{len(train_items)} training images is fewer than one batch of {cfg.batch_size}")
        return train_items, val_items

    def _build(self, resumed: dict[str, Any] | None) -> None:
        """The model, optimizer and loss scaler, restored from `resumed` when there is one."""
        import torch

        from mai_train.registry import create_model

        cfg = self.cfg
        self.model = create_model(cfg.arch).to(self.device)
        self.opt = _optimizer(cfg, self.model)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device == "cuda")
        self.p = _Progress()
        if resumed:
            self.model.load_state_dict(resumed["model"])
            self.opt.load_state_dict(resumed["optimizer"])
            self.scaler.load_state_dict(resumed["scaler"])
            self.p = _Progress.resumed(resumed)

    def train(self) -> Path:
        with self.display:
            while self.p.epoch < self.cfg.epochs:
                running, t0 = self._train_epoch()
                self._validate(running, t0)
                self.p.epoch, self.p.step_in_epoch = self.p.epoch + 1, 0
                self.checkpoint()
        return finalise(self, log=self.display)

    def checkpoint(self) -> None:
        p = self.p
        _atomic_save({
            "config": asdict(self.cfg), "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(), "history": p.history, "best": p.best, "epoch": p.epoch,
            "step_in_epoch": p.step_in_epoch, "bad": p.bad_total, "wall": p.wall,
        }, self.out / STATE_NAME)

    def _loader(self) -> Any:
        """The rest of this epoch's seeded order (a resumed run skips the steps it did)."""
        import torch
        from torch.utils.data import DataLoader

        cfg, p = self.cfg, self.p
        g = torch.Generator().manual_seed(cfg.seed * 1000 + p.epoch)
        order = torch.randperm(len(self.data), generator=g).tolist()[: self.steps_per_epoch * cfg.batch_size]
        order = order[p.step_in_epoch * cfg.batch_size :]
        return DataLoader(
            torch.utils.data.Subset(self.data, order), batch_size=cfg.batch_size, shuffle=False,
            num_workers=cfg.workers, collate_fn=_collate, drop_last=False,
            persistent_workers=False, pin_memory=self.device == "cuda",
        )

    def _train_epoch(self) -> tuple[_Running, float]:
        """The epoch's remaining steps, checkpointing every `checkpoint_every`; returns
        the running loss and the time the wall clock was last read."""
        cfg, p = self.cfg, self.p
        self.data.epoch = p.epoch
        loader = self._loader()
        self.model.train()
        running = _Running()
        t0 = time.time()
        for x, y, bad in loader:
            p.bad_total += bad
            lr = _lr_at(cfg, p.epoch * self.steps_per_epoch + p.step_in_epoch, self.steps_per_epoch * cfg.epochs)
            if x is not None:
                self._step(x, y, lr, running)
            p.step_in_epoch += 1
            self.display.step(p.epoch, p.step_in_epoch, running.loss / max(running.n, 1),
                              running.correct / max(running.n, 1), lr)
            if p.step_in_epoch % cfg.checkpoint_every == 0:
                p.wall += time.time() - t0
                t0 = time.time()
                self.checkpoint()
        p.wall += time.time() - t0
        return running, time.time()

    def _step(self, x: Any, y: Any, lr: float, running: _Running) -> None:
        import torch

        from mai.preprocess_torch import finish

        for grp in self.opt.param_groups:
            grp["lr"] = lr
        x = finish(x.to(self.device, non_blocking=True), self.spec)
        y = y.to(self.device, non_blocking=True)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.scaler.is_enabled()):
            logits = self.model(x)
            loss = self.loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise TrainError(f"loss became {loss.item()} at epoch {self.p.epoch + 1}; lower --lr")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        running.loss += loss.item() * y.numel()
        running.correct += int(((logits.detach() > 0).float() == y).sum())
        running.n += y.numel()

    def _validate(self, running: _Running, t0: float) -> None:
        """Score the validation split, record the epoch, keep it if it is the best so far."""
        cfg, p = self.cfg, self.p
        scored = score_torch_items(self.model, self.ds, self.val_items, self.spec, batch_size=128, device=self.device)
        val = metrics.summarise(scored.scores, scored.labels, 0.5)
        row = {
            "epoch": p.epoch + 1,
            "train_loss": running.mean(running.loss), "train_accuracy": running.mean(running.correct),
            "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"],
            "val_average_precision": val["average_precision"],
            "wall_s": round(p.wall + (time.time() - t0), 1),
        }
        p.history.append(row)
        self.display.epoch_done(row)
        if p.best is None or (row[f"val_{cfg.select}"] or 0) > p.best["metric"]:
            p.best = {"epoch": p.epoch + 1, "metric": row[f"val_{cfg.select}"] or 0,
                      "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
        p.wall += time.time() - t0


def finalise(run: CnnRun, log: Any = None) -> Path:
    """Calibrate the best epoch on validation data and write the artifact."""
    from mai_train.registry import create_model

    cfg, out, ds, p = run.cfg, run.out, run.ds, run.p
    if p.best is None:
        raise TrainError("no epoch finished; nothing to save")
    model = create_model(cfg.arch).to(run.device)
    model.load_state_dict(p.best["model"])
    scored = score_torch_items(model, ds, run.val_items, run.spec, batch_size=128, device=run.device)
    cal = calibrate(scored, cfg.target_fpr, cfg.band_precision)
    threshold, band, rep = cal["threshold"], cal["uncertain"], cal["metrics"]["val"]
    name = cfg.name or out.name
    meta = {
        "name": name,
        "architecture": {"name": cfg.arch, "args": {}},
        "preprocess": run.spec.to_dict(),
        **cal,
        "data": {
            "source": str(cfg.data), "fingerprint": ds.fingerprint(), "split_rule": ds.split_rule,
            "counts": {"all": ds.counts(), "train": len(ds.split("train")),
                       "val": len(ds.split("val")),
                       "train_used": len(ds.split("train")) if not cfg.limit else cfg.limit},
            "unreadable_train": p.bad_total, "unreadable_val": len(scored.unreadable),
        },
        "train": {
            "command": " ".join(["mai", *sys.argv[1:]]) if sys.argv and "mai" in Path(sys.argv[0]).name else None,
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("spec",)},
            "best_epoch": p.best["epoch"], "selected_by": f"val_{cfg.select}",
            "epochs": len(p.history), "wall_s": round(p.wall, 1), "hardware": hardware(run.device),
            "history": p.history,
        },
        "versions": versions(),
    }
    art = save_artifact(out, model, meta, name)
    if log is not None:
        log.note(f"saved {art.model_id} to {out} (best epoch {p.best['epoch']}, threshold {threshold:.4f}, "
                 f"band [{band[0]:.4f}, {band[1]:.4f}], val accuracy {rep['accuracy']:.4f})")
    return out
