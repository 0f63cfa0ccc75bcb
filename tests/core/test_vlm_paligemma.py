"""PaliGemma, the second transformers-native family, with a tiny random model built
here: its prompt and answer tokens, P(Yes) against a plain forward pass, answer
tokens marked as suffix (token_type_ids 1), and LoRA on its language model."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("torch")

from support.vlm import make_tiny_paligemma, noise_image  # noqa: E402

from mai.vlm import VLMScorer  # noqa: E402

# transformers' own PaliGemma processor trips a NumPy 2 deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_paligemma_scores_and_trains(tmp_path: Path) -> None:
    import torch

    from mai_train.vlm.train import VLMTrainConfig, attach_lora

    s = VLMScorer(make_tiny_paligemma(tmp_path / "tiny-paligemma"), device="cpu")
    b = s.backend
    assert b.family == "paligemma" and b.prompt == "<image>answer en Is this image AI-generated?"
    # The processor ends the prompt with a newline; the answer follows it without a space.
    assert b.tokenizer.convert_ids_to_tokens([b.yes_id, b.no_id]) == ["Yes", "No"]
    images = [noise_image(i, w=30 + 9 * i) for i in range(3)]
    got = s.score(images)
    enc = b.processor(text=[b.prompt] * 3, images=[[im] for im in images], return_tensors="pt", padding=True)
    enc.pop("labels", None)
    with torch.no_grad():
        lg = b.model(**enc).logits[:, -1, [b.yes_id, b.no_id]]
    assert torch.allclose(torch.tensor(got), torch.softmax(lg, -1)[:, 0], atol=1e-5)
    batch = b.batch(images, [True, False, True])
    n = batch.answer_len
    assert batch.inputs["token_type_ids"][:, -n:].tolist() == [[1] * n] * 3  # the answer is the suffix
    assert batch.inputs["token_type_ids"][:, :-n].sum() == 0
    peft_model, regex = attach_lora(b, VLMTrainConfig(base="", data="", out=""))
    assert "language_model" in regex
    assert all("language_model" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(6):
        loss, _ = b.loss(images, [True, False, True])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
