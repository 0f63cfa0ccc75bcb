"""Tiny random VLM bases built in code for the VLM tests: no network, no downloaded weights.

`make_tiny_idefics3(out)` writes a local base folder as `huggingface-cli download`
would: an Idefics3 model (a 1-layer vision tower, a 2-layer Llama language model,
hidden size 32) with random weights, a byte-level BPE tokenizer trained here on
a few strings with the special tokens Idefics3's processor needs, and a
SmolVLM-style chat template.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

TEXTS = [
    "User: Is this image AI-generated?", "Assistant: Yes.", "Assistant: No.", " Yes. No. Yes No",
    "Describe this image in one sentence.", "A photo of a cat on a mat.", "A red car near the sea.",
]


def train_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<pad>", "<image>", "<fake_token_around_image>", "<end_of_utterance>",
               "<global-img>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<end_of_utterance>", pad_token="<pad>",
        additional_special_tokens=["<image>", "<fake_token_around_image>", "<end_of_utterance>", "<global-img>"])


def make_tiny_idefics3(out: Path, seed: int = 0, chat_template: bool = True) -> Path:
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tok = train_tokenizer()
    image_size, patch, scale = 32, 8, 2
    ip = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": image_size},
                                max_image_size={"longest_edge": image_size})
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=(image_size // patch) ** 2 // scale**2,
                             chat_template=CHAT_TEMPLATE if chat_template else None)
    eou = tok.convert_tokens_to_ids("<end_of_utterance>")
    cfg = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": patch},
        text_config={"model_type": "llama", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "max_position_embeddings": 256, "pad_token_id": tok.pad_token_id,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": eou,
                     "initializer_range": 0.2},  # larger logits: LoRA can move them in a few steps
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = eou
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def noise_image(seed: int, w: int = 40, h: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


class StandInGenerator:
    """A text-to-image stand-in: a seeded pattern image; it records its calls."""

    name = "stand-in-gen"

    def __init__(self, size: tuple[int, int] = (48, 40)) -> None:
        self.size = size
        self.calls: list[tuple[str, int]] = []

    def generate(self, prompt: str, seed: int) -> Image.Image:
        self.calls.append((prompt, seed))
        rng = np.random.default_rng(seed)
        w, h = self.size
        a = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
        return Image.fromarray(a).resize((w, h), Image.NEAREST)


def make_tiny_paligemma(out: Path, seed: int = 0) -> Path:
    """A tiny random PaliGemma (SigLIP 2x2 patches, 2-layer Gemma) with its processor."""
    import torch
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    tok = train_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<eos>"]})
    tok.eos_token = "<eos>"
    ip = SiglipImageProcessor(size={"height": 32, "width": 32}, image_seq_length=4)
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)  # adds its <loc..>/<seg..> tokens
    cfg = PaliGemmaConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 16,
                       "projection_dim": 32},
        text_config={"model_type": "gemma", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                     "initializer_range": 0.2, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id},
        image_token_id=tok.convert_tokens_to_ids("<image>"), projection_dim=32)
    torch.manual_seed(seed)
    PaliGemmaForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out
