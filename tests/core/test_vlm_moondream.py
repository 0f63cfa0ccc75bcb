"""The moondream path with a stand-in: a tiny model folder whose code ships with it
(`auto_map`, loaded only with trust_remote_code), exposing moondream2's 2024 API
(`encode_image`, `input_embeds`, a Phi `text_model`). The real moondream2 cannot
be tested here (no weights); this proves the loading rule and the plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("torch")

from support.vlm import noise_image, train_tokenizer  # noqa: E402

from mai.vlm import VLMError, VLMScorer  # noqa: E402

CONFIG_PY = '''
from transformers import PretrainedConfig


class MoondreamConfig(PretrainedConfig):
    model_type = "moondream1"

    def __init__(self, text_config=None, **kwargs):
        self.text_config = text_config or {}
        super().__init__(**kwargs)
'''

MODEL_PY = '''
import numpy as np
import torch
from torch import nn
from transformers import PhiConfig, PhiForCausalLM, PreTrainedModel

from .configuration_moondream import MoondreamConfig


class Moondream(PreTrainedModel):
    """moondream2's 2024 API on a tiny Phi: 4 image tokens from an 8x8 thumbnail."""

    config_class = MoondreamConfig

    def __init__(self, config):
        super().__init__(config)
        self.text_model = PhiForCausalLM(PhiConfig(**config.text_config))
        self.vision = nn.Linear(48, config.text_config["hidden_size"])
        self.post_init()

    def _init_weights(self, module):
        pass

    def encode_image(self, images):
        with torch.no_grad():
            x = torch.stack([torch.tensor(np.asarray(im.convert("RGB").resize((8, 8))), dtype=torch.float32) / 255
                             for im in images])
            b = x.shape[0]
            p = x.reshape(b, 2, 4, 2, 4, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, 4, 48)
            return self.vision(p.to(self.vision.weight.device, self.vision.weight.dtype))

    def input_embeds(self, prompt, image_embeds, tokenizer):
        dev = self.vision.weight.device
        emb = self.text_model.get_input_embeddings()
        parts = [emb(torch.tensor([[tokenizer.bos_token_id]], device=dev))]
        before, after = prompt.split("<image>")
        if before:
            parts.append(emb(tokenizer(before, return_tensors="pt", add_special_tokens=False).input_ids.to(dev)))
        parts.append(image_embeds.to(dev))
        if after:
            parts.append(emb(tokenizer(after, return_tensors="pt", add_special_tokens=False).input_ids.to(dev)))
        return torch.cat(parts, dim=1)
'''


@pytest.fixture(scope="module")
def fake_moondream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("md") / "moondream2"
    p.mkdir()
    tok = train_tokenizer()
    tok.eos_token = tok.bos_token = "<|endoftext|>"
    tok.save_pretrained(p)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 128, "initializer_range": 0.2,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    (p / "configuration_moondream.py").write_text(CONFIG_PY)
    (p / "moondream.py").write_text(MODEL_PY)
    import sys

    sys.path.insert(0, str(p.parent))
    try:  # build the weights with the folder's own code, as its authors would
        import importlib

        pkg = importlib.import_module("moondream2.moondream")
        cfg_mod = importlib.import_module("moondream2.configuration_moondream")
    finally:
        sys.path.remove(str(p.parent))
    import torch

    cfg = cfg_mod.MoondreamConfig(text_config=text, architectures=["Moondream"], auto_map={
        "AutoConfig": "configuration_moondream.MoondreamConfig", "AutoModelForCausalLM": "moondream.Moondream"})
    torch.manual_seed(0)
    pkg.Moondream(cfg).save_pretrained(p)
    assert json.loads((p / "config.json").read_text())["auto_map"]
    return p


@pytest.fixture(autouse=True)
def _modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Remote code is copied into transformers' modules cache: keep it in the test's folder.
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "modules"))


def test_refused_without_trust_remote_code(fake_moondream: Path) -> None:
    with pytest.raises(VLMError, match="--trust-remote-code"):
        VLMScorer(fake_moondream)


def test_scores_and_lora_with_trust_remote_code(fake_moondream: Path) -> None:
    import torch

    from mai_train.vlm.train import VLMTrainConfig, attach_lora

    s = VLMScorer(fake_moondream, trust_remote_code=True, device="cpu")
    b = s.backend
    assert b.family == "moondream"
    assert b.prompt == "<image>\n\nQuestion: Is this image AI-generated?\n\nAnswer:"
    assert b.tokenizer.decode([b.yes_id]).strip() == "Yes" and b.tokenizer.decode([b.no_id]).strip() == "No"
    images = [noise_image(i) for i in range(3)]
    got = s.score(images)
    assert all(0 <= p <= 1 for p in got)
    # By hand: embeddings for one image, a forward, the softmax over the two logits.
    with torch.no_grad():
        e = b.model.input_embeds(b.prompt, b.model.encode_image(images[:1]), b.tokenizer)
        lg = b.model.text_model(inputs_embeds=e).logits[0, -1, [b.yes_id, b.no_id]]
    assert got[0] == pytest.approx(torch.softmax(lg, -1)[0].item(), abs=1e-5)
    # The stand-in's Phi names its projections q_proj/v_proj (moondream2's own code: Wqkv/out_proj).
    peft_model, regex = attach_lora(b, VLMTrainConfig(base="", data="", out="", target_modules=["q_proj", "v_proj"]))
    assert regex.startswith(".*text_model")
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    first = None
    for _ in range(6):
        loss, _ = b.loss(images, [True, False, True])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    assert len(s.caption(images[:2], max_new_tokens=3)) == 2


def test_a_2025_revision_is_refused_with_the_revision_to_get(tmp_path: Path) -> None:
    from mai.vlm.load import MoondreamBackend

    class Query:  # the 2025 API: query(), no encode_image/input_embeds
        def query(self, image, question):
            return {"answer": "yes"}

    with pytest.raises(VLMError, match="--revision 2024-08-26"):
        MoondreamBackend(tmp_path, {}, Query(), None, "cpu", None)
