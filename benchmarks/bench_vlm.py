"""Time and memory of the VLM stage without downloading anything.

    python benchmarks/bench_vlm.py [--device cpu|cuda] [--batch-size 4] [--steps 3] [--threads N]

Builds a SmolVLM-256M-shaped Idefics3 with random weights (SigLIP-B/16 at 512
pixels, 12 layers of width 768; a SmolLM2-135M-shaped language model, 30
layers of width 576, vocabulary 49,280; pixel shuffle 4, so 64 tokens per
512-pixel tile), with a small tokenizer made in code. Speed and memory do not
depend on the weights' values, so the figures hold for the real model; the
answers, of course, do not. It times P(Yes) scoring per image (one 512-pixel
tile, and a 1024x768 photo split into 12 tiles plus the global view), and LoRA
training steps (forward and backward on the answer loss), in wall-clock seconds
and in this process's CPU seconds (all threads; on a busy machine the CPU
seconds are the steadier figure), and reports peak memory (resident set on CPU,
allocated on CUDA). Partial results go to stderr as they come.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mai, run from anywhere


def build(out: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    special = ["<|endoftext|>", "<pad>", "<image>", "<fake_token_around_image>", "<end_of_utterance>", "<global-img>",
               *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["User: Is this image AI-generated?", "Assistant: Yes.", "Assistant: No."] * 20,
                            trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ft = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<end_of_utterance>",
                                 pad_token="<pad>", additional_special_tokens=special[2:])
    ip = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 2048},
                                max_image_size={"longest_edge": 512})
    proc = Idefics3Processor(image_processor=ip, tokenizer=ft, image_seq_len=64)
    cfg = Idefics3Config(
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 512, "patch_size": 16},
        text_config={"model_type": "llama", "vocab_size": 49280, "hidden_size": 576, "intermediate_size": 1536,
                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                     "max_position_embeddings": 8192, "rope_theta": 100000.0, "pad_token_id": ft.pad_token_id,
                     "tie_word_embeddings": True},
        image_token_id=ft.convert_tokens_to_ids("<image>"), scale_factor=4)
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def say(res: dict[str, Any]) -> None:
    print(json.dumps(res), file=sys.stderr, flush=True)


def peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--photo", action=argparse.BooleanOptionalAction, default=True,
                    help="Also time a 1024x768 photo split into 13 tiles (slow on a CPU).")
    a = ap.parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from mai.vlm import VLMScorer
    from mai_train.vlm.train import VLMTrainConfig, attach_lora

    if a.threads:
        torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    tile = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(a.batch_size)]
    photo = [Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)) for _ in range(a.batch_size)]
    res: dict[str, Any] = {"device": a.device, "batch_size": a.batch_size, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as d:
        base = build(Path(d) / "smolvlm-256m-shaped")
        t0 = time.perf_counter()
        s = VLMScorer(base, device=a.device, batch_size=a.batch_size)
        res["load_s"] = round(time.perf_counter() - t0, 2)
        res["dtype"] = str(s.backend.dtype).replace("torch.", "")
        say(res)
        cases = [("tile_512", tile, False)] + ([("photo_1024x768_13_tiles", photo, True)] if a.photo else [])
        for name, ims, split in cases:
            s.backend.image_splitting = split
            s.score(ims[:1])  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            s.score(ims)
            res[f"score_s_per_image_{name}"] = round((time.perf_counter() - t0) / len(ims), 3)
            res[f"score_cpu_s_per_image_{name}"] = round((time.process_time() - c0) / len(ims), 3)
            say(res)
        res["peak_mb_scoring"] = round(peak_mb(a.device))
        b = s.backend
        b.image_splitting = False
        if a.device == "cuda":
            b.enable_gradient_checkpointing()
        peft_model, _ = attach_lora(b, VLMTrainConfig(base="", data="", out=""))
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
        peft_model.train()
        times, cpu = [], []
        amp = torch.autocast("cuda", dtype=b.dtype) if a.device == "cuda" else None
        for i in range(a.steps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            if amp is not None:
                with amp:
                    loss, _ = b.loss(tile, [j % 2 == 0 for j in range(len(tile))])
            else:
                loss, _ = b.loss(tile, [j % 2 == 0 for j in range(len(tile))])
            loss.backward()
            opt.step()
            opt.zero_grad()
            if a.device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        res["train_s_per_step_tile_512"] = round(sum(times) / len(times), 3)
        res["train_cpu_s_per_step_tile_512"] = round(sum(cpu) / len(cpu), 3)
        res["train_images_per_s"] = round(len(tile) / (sum(times) / len(times)), 2)
        res["peak_mb_training"] = round(peak_mb(a.device))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
