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


def train_vlm(cfg: VLMTrainConfig, log: Any = None) -> Path:
    """Train a LoRA adapter; returns the adapter folder (= cfg.out)."""
    from mai.vlm.load import require_vlm_extra

    require_vlm_extra("mai train vlm")
    import torch

    from mai.vlm.images import open_image
    from mai.vlm.load import base_identity, check_base, load_base
    from mai_train.display import TrainDisplay
    from mai_train.evaluate import calibrate
    from mai_train.vlm.evaluate import score_items

    out = Path(cfg.out)
    if (out / META_NAME).exists():
        raise VLMTrainError(f"{out} already holds an adapter ({META_NAME}); choose another --out or delete it")
    resumed = load_state(out, asdict(cfg), _RESUME_KEYS, VLMTrainError)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base_path, base_cfg = check_base(cfg.base, cfg.trust_remote_code)
    ds = open_dataset(cfg.data)
    rng = random.Random(cfg.seed)
    train_items, val_items = ds.split("train"), ds.split("val")
    if cfg.limit and len(train_items) > cfg.limit:
        train_items = rng.sample(train_items, cfg.limit)
    if cfg.val_limit and len(val_items) > cfg.val_limit:
        val_items = sorted(rng.sample(val_items, cfg.val_limit), key=lambda i: i.relpath)
    if not val_items:
        raise VLMTrainError(f"{cfg.data}: the hash split left no validation images; add data")
    balanced_order(train_items, random.Random(0))  # fails early on a missing class

    device = torch_device(cfg.device)
    dtype = None if (device == "cuda" and cfg.amp) else "float32"
    t_load = time.time()
    backend = load_base(base_path, cfg.trust_remote_code, device, dtype, cfg.question, cfg.image_splitting)
    load_s = time.time() - t_load
    gc = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device == "cuda"
    if gc:
        backend.enable_gradient_checkpointing()
    torch.manual_seed(cfg.seed)
    peft_model, regex = attach_lora(backend, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    n_train_params = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in peft_model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = backend.dtype if device == "cuda" and backend.dtype != torch.float32 else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    per_epoch = 2 * min(sum(i.label == REAL for i in train_items), sum(i.label == FAKE for i in train_items))
    micro_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.05 * total))
    eval_bs = cfg.eval_batch_size or cfg.batch_size

    display = TrainDisplay(cfg.epochs, steps_per_epoch, log=log)
    display.note(f"{per_epoch} balanced training images an epoch (of {len(train_items)}), {len(val_items)} "
                 f"validation, from {ds.root}; {backend.family} base {base_path.name} on {device} "
                 f"({str(backend.dtype).replace('torch.', '')}, loaded in {load_s:.1f} s); LoRA r={cfg.lora_r} "
                 f"on {regex}: {n_train_params:,} of {n_all:,} parameters train")

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    bad_total, step, wall = 0, 0, 0.0
    first_epoch, start, step_in_epoch, run = 0, 0, 0, {"loss": 0.0, "correct": 0, "n": 0}
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    if resumed is not None:
        set_peft_model_state_dict(peft_model, {k: v.to(device) for k, v in resumed["lora"].items()})
        opt.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
        history, best, bad_total, step, wall = (resumed["history"], resumed["best"], resumed["bad"],
                                                resumed["step"], resumed["wall"])
        first_epoch, start, step_in_epoch, run = (resumed["epoch"], resumed["start"], resumed["step_in_epoch"],
                                                  resumed["run"])
        torch.set_rng_state(resumed["rng"])
        if device == "cuda" and resumed.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resumed["cuda_rng"])
        display.note(f"resuming at epoch {first_epoch + 1}, optimizer step {step} ({out / STATE_NAME})")

    def checkpoint(epoch: int, start: int, step_in_epoch: int, run: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        _save_state({
            "config": asdict(cfg),
            "lora": {k: v.detach().cpu() for k, v in get_peft_model_state_dict(peft_model).items()},
            "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "history": history, "best": best,
            "bad": bad_total, "step": step, "wall": wall, "epoch": epoch, "start": start,
            "step_in_epoch": step_in_epoch, "run": dict(run), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device == "cuda" else None,
        }, out / STATE_NAME)

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=amp_dtype)

    def p_yes(images: list[Any]) -> list[float]:
        with autocast():
            return backend.p_yes(images)

    with display:
        for epoch in range(first_epoch, cfg.epochs):
            if cfg.max_steps and step >= cfg.max_steps:
                break
            t0 = time.time()
            order = balanced_order(train_items, random.Random(cfg.seed * 1000 + epoch))
            peft_model.train()
            if epoch != first_epoch:
                start, step_in_epoch, run = 0, 0, {"loss": 0.0, "correct": 0, "n": 0}
            micro = start // cfg.batch_size
            opt.zero_grad(set_to_none=True)
            lr = lr_at(cfg, step, total, warmup)
            for i in range(start, len(order), cfg.batch_size):
                images, answers = [], []
                for it in order[i : i + cfg.batch_size]:
                    try:
                        images.append(open_image(ds.read_bytes(it)))
                        answers.append(it.label == FAKE)
                    except Exception:  # noqa: BLE001 - unreadable images are counted, not fatal
                        bad_total += 1
                micro += 1
                if images:
                    with autocast():
                        loss, yn = backend.loss(images, answers)
                    if not torch.isfinite(loss):
                        raise VLMTrainError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
                    scaler.scale(loss / cfg.grad_accum).backward()
                    run["loss"] += loss.item() * len(images)
                    truth = torch.tensor(answers, device=yn.device)
                    run["correct"] += int(((yn[:, 0] > yn[:, 1]) == truth).sum())
                    run["n"] += len(images)
                last = i + cfg.batch_size >= len(order)
                if micro % cfg.grad_accum == 0 or last:
                    lr = lr_at(cfg, step, total, warmup)
                    for grp in opt.param_groups:
                        grp["lr"] = lr
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
                    step += 1
                    step_in_epoch += 1
                    display.step(epoch, step_in_epoch, run["loss"] / max(run["n"], 1),
                                 run["correct"] / max(run["n"], 1), lr)
                    if cfg.max_steps and step >= cfg.max_steps:
                        break
                    if not last and step % cfg.checkpoint_every == 0:
                        checkpoint(epoch, i + cfg.batch_size, step_in_epoch, run)
            wall += time.time() - t0
            t0 = time.time()
            peft_model.eval()
            scored = score_items(p_yes, ds, val_items, batch_size=eval_bs)
            val = metrics.summarise(scored.scores, scored.labels, 0.5)
            row = {
                "epoch": epoch + 1, "steps": step,
                "train_loss": run["loss"] / run["n"] if run["n"] else None,
                "train_accuracy": run["correct"] / run["n"] if run["n"] else None,
                "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"],
                "val_average_precision": val["average_precision"],
                "wall_s": round(wall + (time.time() - t0), 1),
            }
            wall += time.time() - t0
            history.append(row)
            display.epoch_done(row)
            key = row["val_roc_auc"] if row["val_roc_auc"] is not None else (val["balanced_accuracy"] or 0.0)
            if best is None or key > best["metric"]:
                state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
                best = {"epoch": epoch + 1, "metric": key, "state": state, "scored": scored}
            checkpoint(epoch + 1, 0, 0, {"loss": 0.0, "correct": 0, "n": 0})
    cfg.history = history
    if best is None:
        raise VLMTrainError("no epoch finished; nothing to save")
    if best["epoch"] != len(history):
        set_peft_model_state_dict(peft_model, {k: v.to(device) for k, v in best["state"].items()})
    scored = best["scored"]
    cal = calibrate(scored, cfg.target_fpr, cfg.band_precision)

    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    weights = out / "adapter_model.safetensors"
    digest = sha256_file(weights) if weights.is_file() else hashlib.sha256(b"").hexdigest()
    name = cfg.name or out.name
    conf = {k: v for k, v in asdict(cfg).items() if k != "history"}
    meta = {
        "schema": SCHEMA, "kind": "vlm-lora", "model_id": f"{name}@{digest[:8]}", "name": name,
        "weights_sha256": digest,
        "base": base_identity(base_path, base_cfg),
        "question": cfg.question, "prompt": backend.prompt,
        "answers": {"yes": ANSWER_YES, "no": ANSWER_NO},
        "answer_token_ids": backend.answer_tokens(),
        "score": "softmax over the next-token logits of answer_token_ids.yes and .no after the prompt: P(yes)",
        "options": {"image_splitting": cfg.image_splitting},
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "target_modules": regex,
                 "trainable_parameters": n_train_params},
        **cal,
        "data": {
            "source": str(cfg.data), "fingerprint": ds.fingerprint(), "split_rule": SPLIT_RULE,
            "balance": "each epoch: all of the smaller class and a fresh draw of as many of the larger",
            "counts": {"all": ds.counts(), "train": len(ds.items) - len(ds.split("val")),
                       "val": len(ds.split("val")), "train_used": len(train_items),
                       "train_balanced_per_epoch": per_epoch, "val_used": len(val_items)},
            "unreadable_train": bad_total, "unreadable_val": len(scored.unreadable),
        },
        "train": {
            "command": " ".join(["mai", *sys.argv[1:]]) if sys.argv and "mai" in Path(sys.argv[0]).name else None,
            "config": conf, "best_epoch": best["epoch"], "selected_by": "val_roc_auc",
            "optimizer_steps": step, "warmup_steps": warmup, "gradient_checkpointing": gc,
            "precision": str(backend.dtype).replace("torch.", "") + (" autocast" if amp_dtype else ""),
            "wall_s": round(wall, 1), "load_s": round(load_s, 1), "hardware": hardware(device),
            "history": history,
        },
        "versions": _versions(),
    }
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
    display.note(f"saved {meta['model_id']} to {out} (best epoch {best['epoch']}, threshold {cal['threshold']:.4f}, "
                 f"band [{band[0]:.4f}, {band[1]:.4f}], val accuracy {rep['accuracy']:.4f})")
    return out
