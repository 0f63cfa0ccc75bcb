"""LoRA training of a VLM base on Yes/No: `mai train vlm`.

Every training example is the base's own prompt with the image and the
question "Is this image AI-generated?", followed by the answer "Yes." (a
generated image) or "No." (a real one) and the model's end-of-turn token. The
loss is the cross-entropy on the answer tokens only; the prompt and the image
tokens carry no loss. LoRA (peft) wraps linear layers of the language model
only (per family: `Backend.default_targets`, overridable with
`--target-modules`); the vision tower and the connector stay frozen.

- Classes are balanced to half and half: each epoch takes every image of the
  smaller class and as many of the larger class, drawn afresh each epoch, in
  alternating order (so every batch of an even size is half and half).
- Gradient accumulation: an optimizer step every `grad_accum` batches.
- Learning rate: linear warm-up, then cosine decay to zero.
- On a GPU: bfloat16 weights and autocast (float16 with a gradient scaler where
  bfloat16 is missing), and gradient checkpointing.
- After each epoch the validation split (the data's hash split) is scored with
  P(Yes); the epoch with the best ROC-AUC is kept, and its validation scores
  calibrate the threshold and the uncertainty band (`mai_train.metrics`).

The adapter folder holds peft's `adapter_config.json` and
`adapter_model.safetensors` (`save_pretrained`) and `mai.json` (schema
`mai.vlm/1`), and `val_scores.csv` (each validation image's P(Yes) from the
kept epoch). While a run goes on, the folder holds `state.pt` (the LoRA weights,
optimizer, random state and history, saved every `checkpoint_every` optimizer
steps and after each epoch): the same command with the same --out resumes a cut
run where its last checkpoint left it, drawing the same batches, and ends as the
uncut run would. The state file goes once the adapter is saved.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mai.artifact import META_NAME, sha256_file
from mai.errors import MaiError
from mai.torch_host import hardware, torch_device
from mai.vlm import ANSWER_NO, ANSWER_YES, QUESTION, SCHEMA, VLMError
from mai_train import metrics
from mai_train.checkpoint import STATE_NAME, load_state
from mai_train.checkpoint import save_state as _save_state
from mai_train.data import FAKE, REAL, SPLIT_RULE, Item, open_dataset

VAL_SCORES = "val_scores.csv"


class VLMTrainError(MaiError, RuntimeError):
    """A VLM training run that cannot start or go on."""


@dataclass
class VLMTrainConfig:
    base: str
    data: str
    out: str
    name: str | None = None
    question: str = QUESTION
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 4
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # default: 5% of the optimizer steps (at least 1)
    max_steps: int | None = None  # stop after this many optimizer steps (quick runs)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    gradient_checkpointing: bool | None = None  # default: on a GPU only
    limit: int | None = None  # at most this many training images (before balancing)
    val_limit: int | None = None  # at most this many validation images
    trust_remote_code: bool = False
    image_splitting: bool | None = None  # Idefics3/SmolVLM: the processor's default when None
    target_fpr: float | None = None
    band_precision: float = 0.98
    threads: int | None = None
    eval_batch_size: int | None = None
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)


#: What a resumed run must share with the cut one: they decide the batches and the model.
_RESUME_KEYS = ("base", "data", "question", "epochs", "batch_size", "grad_accum", "lr", "weight_decay",
                "warmup_steps", "max_steps", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "seed",
                "limit", "val_limit", "image_splitting")


def balanced_order(items: list[Item], rng: random.Random) -> list[Item]:
    """All of the smaller class and as many of the larger, alternating fake/real."""
    real = [i for i in items if i.label == REAL]
    fake = [i for i in items if i.label == FAKE]
    n = min(len(real), len(fake))
    if n == 0:
        raise VLMTrainError(f"training needs both classes; the training split has {len(real)} real and "
                            f"{len(fake)} generated images")
    rng.shuffle(real)
    rng.shuffle(fake)
    out: list[Item] = []
    for r, f in zip(real[:n], fake[:n], strict=True):
        out.extend((f, r) if rng.random() < 0.5 else (r, f))
    return out


def lr_at(cfg: VLMTrainConfig, step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from mai_train.checkpoint import versions

    out = versions()
    for pkg in ("transformers", "peft", "tokenizers", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def attach_lora(backend: Any, cfg: VLMTrainConfig) -> tuple[Any, str]:
    """Wrap the backend's model with fresh LoRA layers; returns (peft model, target regex)."""
    from peft import LoraConfig, get_peft_model

    regex = backend.lora_target_regex(cfg.target_modules)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=regex, bias="none")
    try:
        peft_model = get_peft_model(backend.model, lcfg)
    except ValueError as e:
        raise VLMError(f"LoRA found no target modules ({regex}) in {backend.path}: {str(e).splitlines()[0]}; "
                       f"the language model's linear layers are: {', '.join(backend.lm_linear_names())}") from e
    return peft_model, regex


def _fresh_run() -> dict[str, Any]:
    """An epoch's running training loss and accuracy (saved as is in `state.pt`)."""
    return {"loss": 0.0, "correct": 0, "n": 0}


@dataclass
class _Progress:
    """Where a run stands; saved at every checkpoint (mid-epoch included)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the best epoch: number, metric, LoRA weights, validation scores
    bad_total: int = 0  # unreadable training images met
    step: int = 0  # optimizer steps taken
    wall: float = 0.0
    first_epoch: int = 0  # the epoch a resumed run starts in
    start: int = 0  # ... at this position of its order
    step_in_epoch: int = 0
    run: dict[str, Any] = field(default_factory=_fresh_run)


def train_vlm(cfg: VLMTrainConfig, log: Any = None) -> Path:
    """Train a LoRA adapter; returns the adapter folder (= cfg.out)."""
    from mai.vlm.load import require_vlm_extra

    require_vlm_extra("mai train vlm")
    return VlmRun(cfg, log).train()


class VlmRun:
    """One `mai train vlm` run: data, the base with fresh (or resumed) LoRA layers,
    epochs of balanced batches with gradient accumulation and checkpoints, the
    best epoch kept, calibrated and written as an adapter."""

    def __init__(self, cfg: VLMTrainConfig, log: Any = None) -> None:
        import torch

        from mai.vlm.load import check_base
        from mai_train.display import TrainDisplay

        self.cfg, self.out = cfg, Path(cfg.out)
        if (self.out / META_NAME).exists():
            raise VLMTrainError(f"{self.out} already holds an adapter ({META_NAME}); choose another --out or "
                                "delete it")
        resumed = load_state(self.out, asdict(cfg), _RESUME_KEYS, VLMTrainError)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.base_path, self.base_cfg = check_base(cfg.base, cfg.trust_remote_code)
        self.ds = open_dataset(cfg.data)
        self.train_items, self.val_items = self._items()
        self._load()
        self._schedule()
        self.display = TrainDisplay(cfg.epochs, self.steps_per_epoch, log=log)
        self.display.note(
            f"{self.per_epoch} balanced training images an epoch (of {len(self.train_items)}), "
            f"{len(self.val_items)} validation, from {self.ds.root}; {self.backend.family} base "
            f"{self.base_path.name} on {self.device} ({str(self.backend.dtype).replace('torch.', '')}, loaded in "
            f"{self.load_s:.1f} s); LoRA r={cfg.lora_r} on {self.regex}: {self.n_train_params:,} of "
            f"{self.n_all:,} parameters train")
        self.p = _Progress()
        if resumed is not None:
            self._resume(resumed)

    def _items(self) -> tuple[list[Item], list[Item]]:
        cfg, rng = self.cfg, random.Random(self.cfg.seed)
        train_items, val_items = self.ds.split("train"), self.ds.split("val")
        if cfg.limit and len(train_items) > cfg.limit:
            train_items = rng.sample(train_items, cfg.limit)
        if cfg.val_limit and len(val_items) > cfg.val_limit:
            val_items = sorted(rng.sample(val_items, cfg.val_limit), key=lambda i: i.relpath)
        if not val_items:
            raise VLMTrainError(f"{cfg.data}: the hash split left no validation images; add data")
        balanced_order(train_items, random.Random(0))  # fails early on a missing class
        return train_items, val_items

    def _load(self) -> None:
        """The base on its device, LoRA attached, the optimizer and the loss scaler."""
        import torch

        from mai.vlm.load import load_base

        cfg = self.cfg
        self.device = torch_device(cfg.device)
        dtype = None if (self.device == "cuda" and cfg.amp) else "float32"
        t_load = time.time()
        self.backend = load_base(self.base_path, cfg.trust_remote_code, self.device, dtype, cfg.question,
                                 cfg.image_splitting)
        self.load_s = time.time() - t_load
        self.gc = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else self.device == "cuda"
        if self.gc:
            self.backend.enable_gradient_checkpointing()
        torch.manual_seed(cfg.seed)
        self.peft_model, self.regex = attach_lora(self.backend, cfg)
        self.params = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.n_train_params = sum(p.numel() for p in self.params)
        self.n_all = sum(p.numel() for p in self.peft_model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        backend = self.backend
        self.amp_dtype = backend.dtype if self.device == "cuda" and backend.dtype != torch.float32 else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _schedule(self) -> None:
        cfg, items = self.cfg, self.train_items
        self.per_epoch = 2 * min(sum(i.label == REAL for i in items), sum(i.label == FAKE for i in items))
        micro_per_epoch = math.ceil(self.per_epoch / cfg.batch_size)
        self.steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
        self.total = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total = min(self.total, cfg.max_steps)
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.05 * self.total))

    def _resume(self, resumed: dict[str, Any]) -> None:
        import torch
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.peft_model, {k: v.to(self.device) for k, v in resumed["lora"].items()})
        self.opt.load_state_dict(resumed["optimizer"])
        self.scaler.load_state_dict(resumed["scaler"])
        self.p = _Progress(resumed["history"], resumed["best"], resumed["bad"], resumed["step"], resumed["wall"],
                           resumed["epoch"], resumed["start"], resumed["step_in_epoch"], resumed["run"])
        torch.set_rng_state(resumed["rng"])
        if self.device == "cuda" and resumed.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resumed["cuda_rng"])
        self.display.note(f"resuming at epoch {self.p.first_epoch + 1}, optimizer step {self.p.step} "
                          f"({self.out / STATE_NAME})")

    def checkpoint(self, epoch: int, start: int, step_in_epoch: int, run: dict[str, Any]) -> None:
        import torch
        from peft import get_peft_model_state_dict

        p = self.p
        self.out.mkdir(parents=True, exist_ok=True)
        _save_state({
            "config": asdict(self.cfg),
            "lora": {k: v.detach().cpu() for k, v in get_peft_model_state_dict(self.peft_model).items()},
            "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(), "history": p.history,
            "best": p.best, "bad": p.bad_total, "step": p.step, "wall": p.wall, "epoch": epoch, "start": start,
            "step_in_epoch": step_in_epoch, "run": dict(run), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.device == "cuda" else None,
        }, self.out / STATE_NAME)

    def autocast(self) -> Any:
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def p_yes(self, images: list[Any]) -> list[float]:
        with self.autocast():
            return self.backend.p_yes(images)

    def train(self) -> Path:
        cfg, p = self.cfg, self.p
        with self.display:
            for epoch in range(p.first_epoch, cfg.epochs):
                if cfg.max_steps and p.step >= cfg.max_steps:
                    break
                t0 = time.time()
                self._train_epoch(epoch)
                p.wall += time.time() - t0
                self._validate(epoch)
                self.checkpoint(epoch + 1, 0, 0, _fresh_run())
        cfg.history = p.history
        if p.best is None:
            raise VLMTrainError("no epoch finished; nothing to save")
        return self._save()

    def _train_epoch(self, epoch: int) -> None:
        """The epoch's (remaining) batches: an optimizer step every `grad_accum` of them."""
        cfg, p = self.cfg, self.p
        order = balanced_order(self.train_items, random.Random(cfg.seed * 1000 + epoch))
        self.peft_model.train()
        if epoch != p.first_epoch:
            p.start, p.step_in_epoch, p.run = 0, 0, _fresh_run()
        micro = p.start // cfg.batch_size
        self.opt.zero_grad(set_to_none=True)
        for i in range(p.start, len(order), cfg.batch_size):
            self._micro_batch(order[i : i + cfg.batch_size], epoch)
            micro += 1
            last = i + cfg.batch_size >= len(order)
            if micro % cfg.grad_accum == 0 or last:
                self._optimizer_step(epoch)
                if cfg.max_steps and p.step >= cfg.max_steps:
                    break
                if not last and p.step % cfg.checkpoint_every == 0:
                    self.checkpoint(epoch, i + cfg.batch_size, p.step_in_epoch, p.run)

    def _micro_batch(self, items: list[Item], epoch: int) -> None:
        """Forward and backward one batch (its loss scaled for accumulation)."""
        import torch

        from mai.vlm.images import open_image

        images, answers = [], []
        for it in items:
            try:
                images.append(open_image(self.ds.read_bytes(it)))
                answers.append(it.label == FAKE)
            except Exception:  # noqa: BLE001 - unreadable images are counted, not fatal
                self.p.bad_total += 1
        if not images:
            return
        with self.autocast():
            loss, yn = self.backend.loss(images, answers)
        if not torch.isfinite(loss):
            raise VLMTrainError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        run = self.p.run
        run["loss"] += loss.item() * len(images)
        truth = torch.tensor(answers, device=yn.device)
        run["correct"] += int(((yn[:, 0] > yn[:, 1]) == truth).sum())
        run["n"] += len(images)

    def _optimizer_step(self, epoch: int) -> None:
        import torch

        p = self.p
        lr = lr_at(self.cfg, p.step, self.total, self.warmup)
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        p.step += 1
        p.step_in_epoch += 1
        run = p.run
        self.display.step(epoch, p.step_in_epoch, run["loss"] / max(run["n"], 1),
                          run["correct"] / max(run["n"], 1), lr)

    def _validate(self, epoch: int) -> None:
        """Score the validation split with P(Yes); keep the epoch if its ROC-AUC is the best."""
        from peft import get_peft_model_state_dict

        from mai_train.vlm.evaluate import score_vlm_items

        p, run = self.p, self.p.run
        t0 = time.time()
        self.peft_model.eval()
        scored = score_vlm_items(self.p_yes, self.ds, self.val_items, batch_size=self.cfg.eval_batch_size
                             or self.cfg.batch_size)
        val = metrics.summarise(scored.scores, scored.labels, 0.5)
        row = {
            "epoch": epoch + 1, "steps": p.step,
            "train_loss": run["loss"] / run["n"] if run["n"] else None,
            "train_accuracy": run["correct"] / run["n"] if run["n"] else None,
            "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"],
            "val_average_precision": val["average_precision"],
            "wall_s": round(p.wall + (time.time() - t0), 1),
        }
        p.wall += time.time() - t0
        p.history.append(row)
        self.display.epoch_done(row)
        key = row["val_roc_auc"] if row["val_roc_auc"] is not None else (val["balanced_accuracy"] or 0.0)
        if p.best is None or key > p.best["metric"]:
            state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.peft_model).items()}
            p.best = {"epoch": epoch + 1, "metric": key, "state": state, "scored": scored}

    def _save(self) -> Path:
        """Calibrate the best epoch, write the adapter, its mai.json and validation scores."""
        from peft import set_peft_model_state_dict

        from mai_train.evaluate import calibrate

        cfg, out, best = self.cfg, self.out, self.p.best
        assert best is not None
        if best["epoch"] != len(self.p.history):
            set_peft_model_state_dict(self.peft_model, {k: v.to(self.device) for k, v in best["state"].items()})
        scored = best["scored"]
        cal = calibrate(scored, cfg.target_fpr, cfg.band_precision)
        out.mkdir(parents=True, exist_ok=True)
        self.peft_model.save_pretrained(str(out))
        weights = out / "adapter_model.safetensors"
        digest = sha256_file(weights) if weights.is_file() else hashlib.sha256(b"").hexdigest()
        meta = self._meta(cal, digest, scored)
        # Each validation image's P(Yes) from the kept epoch: what calibration saw, and
        # what a re-loaded adapter must reproduce.
        with open(out / VAL_SCORES, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "source", "score"])
            for rel, lab, src, sc in zip(scored.relpaths, scored.labels, scored.sources, scored.scores, strict=True):
                w.writerow([rel, "fake" if lab == FAKE else "real", src, repr(float(sc))])
        tmp = out / (META_NAME + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / META_NAME)
        (out / STATE_NAME).unlink(missing_ok=True)  # the adapter is whole: nothing left to resume
        band, rep = cal["uncertain"], cal["metrics"]["val"]
        self.display.note(f"saved {meta['model_id']} to {out} (best epoch {best['epoch']}, threshold "
                          f"{cal['threshold']:.4f}, band [{band[0]:.4f}, {band[1]:.4f}], val accuracy "
                          f"{rep['accuracy']:.4f})")
        return out

    def _meta(self, cal: dict[str, Any], digest: str, scored: Any) -> dict[str, Any]:
        from mai.vlm.load import base_identity

        cfg, ds, backend, p = self.cfg, self.ds, self.backend, self.p
        name = cfg.name or self.out.name
        return {
            "schema": SCHEMA, "kind": "vlm-lora", "model_id": f"{name}@{digest[:8]}", "name": name,
            "weights_sha256": digest,
            "base": base_identity(self.base_path, self.base_cfg),
            "question": cfg.question, "prompt": backend.prompt,
            "answers": {"yes": ANSWER_YES, "no": ANSWER_NO},
            "answer_token_ids": backend.answer_tokens(),
            "score": "softmax over the next-token logits of answer_token_ids.yes and .no after the prompt: P(yes)",
            "options": {"image_splitting": cfg.image_splitting},
            "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "target_modules": self.regex, "trainable_parameters": self.n_train_params},
            **cal,
            "data": {
                "source": str(cfg.data), "fingerprint": ds.fingerprint(), "split_rule": SPLIT_RULE,
                "balance": "each epoch: all of the smaller class and a fresh draw of as many of the larger",
                "counts": {"all": ds.counts(), "train": len(ds.items) - len(ds.split("val")),
                           "val": len(ds.split("val")), "train_used": len(self.train_items),
                           "train_balanced_per_epoch": self.per_epoch, "val_used": len(self.val_items)},
                "unreadable_train": p.bad_total, "unreadable_val": len(scored.unreadable),
            },
            "train": {
                "command": " ".join(["mai", *sys.argv[1:]]) if sys.argv and "mai" in Path(sys.argv[0]).name else None,
                "config": {k: v for k, v in asdict(cfg).items() if k != "history"}, "best_epoch": p.best["epoch"],
                "selected_by": "val_roc_auc", "optimizer_steps": p.step, "warmup_steps": self.warmup,
                "gradient_checkpointing": self.gc,
                "precision": str(backend.dtype).replace("torch.", "") + (" autocast" if self.amp_dtype else ""),
                "wall_s": round(p.wall, 1), "load_s": round(self.load_s, 1), "hardware": hardware(self.device),
                "history": p.history,
            },
            "versions": _versions(),
        }
