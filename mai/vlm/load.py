"""VLM bases from local folders, and the per-architecture code that asks them a question.

Nothing here downloads: every `from_pretrained` gets a local folder and
`local_files_only=True`. A folder that is missing, or is not a model folder, is
a `VLMError` that says what to download and where to put it.

Families (chosen from the folder's `config.json`):

=============  ================================================================
``idefics3``   Idefics3 and SmolVLM (``model_type`` ``idefics3`` or ``smolvlm``):
               ``AutoModelForImageTextToText`` + ``AutoProcessor``. The prompt is
               the processor's chat template (``User:<image>QUESTION<end_of_utterance>
               \\nAssistant:``), the answer follows after a space: `` Yes.<end_of_utterance>``.
``paligemma``  PaliGemma: the prompt ``<image>answer en QUESTION``; the processor adds
               BOS and a newline, the answer follows it: ``Yes.<eos>``.
``chat``       Any other decoder-only ``AutoModelForImageTextToText`` model whose
               processor has a chat template (Qwen2-VL, LLaVA, ...): best effort,
               not tested here.
``moondream``  moondream2 at revision ``2024-08-26`` (``MOONDREAM_REVISION``): its code
               ships with its weights (``trust_remote_code``). The prompt is
               ``<image>\\n\\nQuestion: QUESTION\\n\\nAnswer:``, the answer `` Yes.<|endoftext|>``.
               Later revisions (2025: ``model.query``) run their linear layers as
               ``F.linear(x, w.weight)``, which peft's LoRA layers cannot wrap, so MAI
               refuses them with a message naming the revision to get.
=============  ================================================================

Florence-2 (an encoder-decoder) is not supported: its answers come from a
decoder with its own start token, which this module does not handle yet.

Scoring reads the next-token logits at the end of the prompt: P(Yes) is the
softmax over the logits of two token ids only, the first token of the answer
"Yes." and the first token of "No." as they are tokenized right after the
prompt (`Backend.answer_ids`). Training appends the whole answer (its tokens
and the end-of-turn token) and puts the loss on those tokens only.

Batches pad the prompts on the left and the answers on the right, so the
position that predicts the first answer token is the last prompt position in
every row; position ids count only real tokens (families that take them).
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mai.artifact import sha256_file
from mai.torch_host import torch_device
from mai.vlm import QUESTION, VLMError

#: The moondream2 revision MAI supports: the last with the `encode_image` /
#: `answer_question` API and a transformers-style Phi text model LoRA can wrap.
MOONDREAM_REVISION = "2024-08-26"
MOONDREAM_REPO = "vikhyatk/moondream2"


@dataclass(frozen=True)
class KnownBase:
    repo: str
    revision: str | None = None
    remote_code: bool = False
    note: str = ""


#: Folder names (lower case) that MAI recognises, for download hints.
KNOWN_BASES: dict[str, KnownBase] = {
    "moondream2": KnownBase(MOONDREAM_REPO, MOONDREAM_REVISION, True, "about 3.7 GB"),
    "smolvlm-256m-instruct": KnownBase("HuggingFaceTB/SmolVLM-256M-Instruct", None, False, "about 0.5 GB"),
    "smolvlm-500m-instruct": KnownBase("HuggingFaceTB/SmolVLM-500M-Instruct", None, False, "about 1 GB"),
    "smolvlm-instruct": KnownBase("HuggingFaceTB/SmolVLM-Instruct", None, False, "about 4.5 GB"),
    "paligemma-3b-mix-224": KnownBase("google/paligemma-3b-mix-224", None, False,
                                      "about 6 GB; gated: accept the licence on the Hub first"),
}


def _known(name: str) -> KnownBase | None:
    n = name.lower()
    if n in KNOWN_BASES:
        return KNOWN_BASES[n]
    if n.startswith("moondream"):
        return KNOWN_BASES["moondream2"]
    return None


def download_hint(path: Path) -> str:
    """What to run to put a base model into `path`."""
    kb = _known(path.name)
    if kb is None:
        return (f"put a transformers vision-language model there (config.json, weights and processor files), "
                f"e.g. `huggingface-cli download HuggingFaceTB/SmolVLM-256M-Instruct --local-dir {path}`; "
                "or pass a path such as models/moondream2")
    rev = f" --revision {kb.revision}" if kb.revision else ""
    extra = " (then pass --trust-remote-code: its code ships with its weights)" if kb.remote_code else ""
    return (f"download {kb.repo}{' at revision ' + kb.revision if kb.revision else ''} ({kb.note}) with "
            f"`huggingface-cli download {kb.repo}{rev} --local-dir {path}` "
            f"(`hf download` with huggingface_hub >= 1.0){extra}")


def models_dir() -> Path:
    """Where bare names such as `--vlm moondream2` are looked up: $MAI_HOME/models."""
    from mai.appdir import app_dir

    return app_dir() / "models"


def resolve_base(base: str | os.PathLike[str]) -> Path:
    """The base model folder for a path or a bare name (looked up in `models_dir()`).
    Raises `VLMError` with the download command when it is missing."""
    p = Path(base).expanduser()
    if not p.exists() and len(p.parts) == 1 and not str(base).startswith("."):
        cand = models_dir() / p.name
        if cand.exists():
            p = cand
        else:
            raise VLMError(f"VLM base {str(base)!r} is neither a folder here nor in {models_dir()}: "
                           f"{download_hint(cand)}. MAI never downloads weights itself")
    if not p.exists():
        raise VLMError(f"VLM base folder not found: {p}: {download_hint(p)}. MAI never downloads weights itself")
    if not p.is_dir():
        raise VLMError(f"VLM base {p} is a file; give the model folder (the one holding config.json)")
    if not (p / "config.json").is_file():
        what = "an adapter folder (give it to --vlm-adapter, and its base to --vlm)" \
            if (p / "adapter_config.json").is_file() else "not a model folder"
        raise VLMError(f"{p} has no config.json: {what}; {download_hint(p)}")
    return p


def read_config(p: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VLMError(f"{p / 'config.json'} is not readable JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise VLMError(f"{p / 'config.json'} is not a JSON object")
    return cfg


def needs_remote_code(cfg: dict[str, Any]) -> bool:
    return bool(cfg.get("auto_map"))


def family_of(cfg: dict[str, Any]) -> str:
    mt = str(cfg.get("model_type", "")).lower()
    arch = " ".join(cfg.get("architectures") or []).lower()
    if needs_remote_code(cfg):
        if "moondream" in mt or "moondream" in arch or "moondream" in json.dumps(cfg.get("auto_map")).lower():
            return "moondream"
        return "remote"
    if mt in ("idefics3", "smolvlm"):
        return "idefics3"
    if mt == "paligemma":
        return "paligemma"
    if mt in ("florence2", "florence-2") or "florence" in arch:
        return "florence2"
    return "chat"


def check_base(base: str | os.PathLike[str], trust_remote_code: bool = False) -> tuple[Path, dict[str, Any]]:
    """Resolve and check a base folder without loading anything heavy."""
    p = resolve_base(base)
    cfg = read_config(p)
    fam = family_of(cfg)
    if needs_remote_code(cfg) and not trust_remote_code:
        what = "moondream2" if fam == "moondream" else f"the model in {p}"
        raise VLMError(f"{what} runs Python code that ships with its weights ({p}); MAI runs it only when "
                       "you pass --trust-remote-code (trust_remote_code=True), after you have checked its source")
    if fam == "florence2":
        raise VLMError(f"{p} is Florence-2, an encoder-decoder model, which MAI's VLM layer does not support yet; "
                       "use SmolVLM (HuggingFaceTB/SmolVLM-256M-Instruct), PaliGemma or moondream2")
    if fam == "remote":
        raise VLMError(f"{p} needs remote code that MAI does not know (only moondream2 is supported that way)")
    return p, cfg


def base_identity(p: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """What names a base: folder name, model type, a hash of its config.json, and
    the Hub commit when the folder came from `huggingface-cli download --local-dir`."""
    ident: dict[str, Any] = {
        "name": p.name, "path": str(p.resolve()), "family": family_of(cfg),
        "model_type": cfg.get("model_type"), "architectures": cfg.get("architectures"),
        "config_sha256": sha256_file(p / "config.json"), "remote_code": needs_remote_code(cfg),
    }
    meta = p / ".cache" / "huggingface" / "download" / "config.json.metadata"
    try:
        first = meta.read_text(encoding="utf-8").splitlines()[0].strip()
        if re.fullmatch(r"[0-9a-f]{40}", first):
            ident["commit"] = first
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    kb = _known(p.name)
    if kb is not None:
        ident["hub_repo"] = kb.repo
        if kb.revision:
            ident["expected_revision"] = kb.revision
    return ident


def pick_dtype(device: str, dtype: str | None = None) -> Any:
    """float32 on CPU; bfloat16 on a GPU that has it, else float16."""
    import torch

    if dtype:
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise VLMError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quiet_transformers() -> None:
    """No download progress bars and no advice on stderr: MAI prints its own lines."""
    import warnings

    # peft 0.21 asks transformers 5 a deprecated question on every LoRA step.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # noqa: BLE001
        pass


def require_vlm_extra(what: str = "the VLM") -> None:
    missing = []
    for mod in ("torch", "transformers", "peft"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise VLMError(f"{what} needs {', '.join(missing)}: pip install 'mai-detect[vlm]'")


@dataclass
class Batch:
    """Model inputs for one batch, and for training the answer block's labels."""

    inputs: dict[str, Any]
    answer_len: int = 0  # tokens of the (right-padded) answer block at the end
    labels: Any = None  # LongTensor [B, answer_len], -100 on padding


class Backend:
    """One loaded base model and the code that asks it the question.

    Subclasses build prompts and inputs; this class turns them into P(Yes),
    answer losses and captions.
    """

    family = "base"
    answer_sep = " "  # between the prompt and the answer text
    #: regex (matched with re.search) that a module name must match to be in the language model
    lm_pattern = r"(^|\.)(text_model|language_model)\."
    default_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __init__(self, path: Path, cfg: dict[str, Any], model: Any, tokenizer: Any, device: str, dtype: Any,
                 question: str = QUESTION) -> None:
        self.path, self.cfg, self.model, self.tokenizer = path, cfg, model, tokenizer
        self.device, self.dtype, self.question = device, dtype, question
        self.prompt = self.build_prompt(question)
        self.yes_ids = self.answer_ids("Yes.")
        self.no_ids = self.answer_ids("No.")
        self.yes_id, self.no_id = self.yes_ids[0], self.no_ids[0]
        if self.yes_id == self.no_id:
            raise VLMError(f"{path}: the tokenizer starts 'Yes.' and 'No.' with the same token "
                           f"{self.tokenizer.convert_ids_to_tokens([self.yes_id])}; P(Yes) cannot be read from it")

    # -- what subclasses provide ------------------------------------------------
    def build_prompt(self, question: str) -> str:
        raise NotImplementedError

    def prompt_tail(self, prompt: str) -> str:
        """The prompt's text as the tokenizer sees it right before the answer."""
        return prompt

    def end_of_answer(self) -> str:
        return self.tokenizer.eos_token or ""

    def encode_prompts(self, images: list[Any], prompt: str) -> dict[str, Any]:
        raise NotImplementedError

    def forward_logits(self, inputs: dict[str, Any], keep: int) -> Any:
        raise NotImplementedError

    def generate(self, images: list[Any], question: str, max_new_tokens: int) -> list[str]:
        """Greedy answers to `question` about each image."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------
    def answer_ids(self, answer: str) -> list[int]:
        """The token ids of `answer` (plus the end-of-turn token) as they follow the prompt.

        Tokenizes the prompt alone and the prompt with the answer; when the first
        is a prefix of the second, the rest are the answer's ids in context (a
        leading space merges into the first answer token as it would in the
        model's own output). Otherwise the answer is tokenized on its own.
        """
        tok = self.tokenizer
        text = self.answer_sep + answer + self.end_of_answer()
        tail = self.prompt_tail(self.prompt)
        pre = tok(tail, add_special_tokens=False)["input_ids"]
        full = tok(tail + text, add_special_tokens=False)["input_ids"]
        if full[: len(pre)] == pre and len(full) > len(pre):
            return list(full[len(pre):])
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise VLMError(f"{self.path}: the tokenizer gives no tokens for {text!r}")
        return list(ids)

    def answer_tokens(self) -> dict[str, Any]:
        t = self.tokenizer.convert_ids_to_tokens([self.yes_id, self.no_id])
        return {"yes": self.yes_id, "no": self.no_id, "yes_token": t[0], "no_token": t[1],
                "yes_answer_ids": self.yes_ids, "no_answer_ids": self.no_ids}

    def answer_block(self, answers: list[bool]) -> tuple[Any, Any, Any]:
        """Right-padded ids, mask and labels of the answers (True = "Yes.")."""
        import torch

        seqs = [self.yes_ids if a else self.no_ids for a in answers]
        n = max(len(s) for s in seqs)
        pad = self.pad_id()
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        labels = torch.full((len(seqs), n), -100, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            labels[i, : len(s)] = torch.tensor(s)
        return ids, mask, labels

    def pad_id(self) -> int:
        tok = self.tokenizer
        for v in (tok.pad_token_id, tok.eos_token_id, 0):
            if v is not None:
                return int(v)
        return 0

    def batch(self, images: list[Any], answers: list[bool] | None = None) -> Batch:
        raise NotImplementedError

    def yes_no_logits(self, images: list[Any]) -> Any:
        """[B, 2] float32 next-token logits of the Yes and No tokens after the prompt."""
        import torch

        b = self.batch(images)
        with torch.inference_mode():
            last = self.forward_logits(b.inputs, 1)[:, -1, :]
        return last[:, [self.yes_id, self.no_id]].float()

    def p_yes(self, images: list[Any]) -> list[float]:
        import torch

        lg = self.yes_no_logits(images)
        return torch.softmax(lg, dim=-1)[:, 0].tolist()

    def loss(self, images: list[Any], answers: list[bool]) -> tuple[Any, Any]:
        """Mean cross-entropy over the answer tokens, and the [B, 2] Yes/No logits
        at the first answer position (for accuracy)."""
        import torch

        b = self.batch(images, answers)
        n = b.answer_len
        logits = self.forward_logits(b.inputs, n + 1)[:, -(n + 1):-1, :].float()
        labels = b.labels.to(logits.device)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                 ignore_index=-100)
        return loss, logits[:, 0, [self.yes_id, self.no_id]].detach()

    def lora_target_regex(self, names: list[str] | None = None) -> str:
        """A regex (peft matches it against full module names) selecting the
        given leaf names inside the language model only."""
        leaves = names or list(self.default_targets)
        for n in leaves:
            if not re.fullmatch(r"[A-Za-z0-9_]+", n):
                raise VLMError(f"--target-modules: {n!r} is not a module name (letters, digits, _)")
        return rf".*{self.lm_regex_core()}.*\.({'|'.join(leaves)})"

    def lm_regex_core(self) -> str:
        return r"(text_model|language_model)\."

    def lm_linear_names(self) -> list[str]:
        """Leaf names of the linear layers inside the language model (for messages)."""
        import torch

        pat = re.compile(self.lm_pattern)
        return sorted({n.rsplit(".", 1)[-1] for n, m in self.model.named_modules()
                       if isinstance(m, torch.nn.Linear) and pat.search(n)})

    def enable_gradient_checkpointing(self) -> None:
        fn = getattr(self.model, "gradient_checkpointing_enable", None)
        if fn is not None:
            fn(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(self.model.config, "use_cache"):
                self.model.config.use_cache = False


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _positions(mask: Any) -> Any:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class HFBackend(Backend):
    """transformers-native image-text-to-text models with a processor."""

    family = "chat"
    answer_sep = ""
    explicit_positions = False  # Qwen2-VL and kin build 3-D positions themselves
    answer_type_id = 0  # token_type_ids of answer tokens

    def __init__(self, path: Path, cfg: dict[str, Any], model: Any, processor: Any, device: str, dtype: Any,
                 question: str = QUESTION, image_splitting: bool | None = None) -> None:
        self.processor = processor
        self.image_splitting = image_splitting
        tok = processor.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None and tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        self._keep_arg = _accepts(model.forward, "logits_to_keep")
        super().__init__(path, cfg, model, tok, device, dtype, question)

    def messages(self, question: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]

    def build_prompt(self, question: str) -> str:
        if not getattr(self.processor, "chat_template", None):
            raise VLMError(f"{self.path}: the processor has no chat template, so MAI does not know how to ask "
                           "this model a question; use SmolVLM/Idefics3, PaliGemma or moondream2")
        return str(self.processor.apply_chat_template(self.messages(question), add_generation_prompt=True,
                                                      tokenize=False))

    def processor_kwargs(self) -> dict[str, Any]:
        return {}

    def encode_prompts(self, images: list[Any], prompt: str) -> dict[str, Any]:
        enc = self.processor(text=[prompt] * len(images), images=[[im] for im in images], return_tensors="pt",
                             padding=True, **self.processor_kwargs())
        return dict(enc)

    def batch(self, images: list[Any], answers: list[bool] | None = None) -> Batch:
        import torch

        inputs = self.encode_prompts(images, self.prompt)
        inputs.pop("labels", None)  # PaliGemma's processor makes some; the loss here is MAI's own
        ids = inputs["input_ids"]
        b = Batch(inputs)
        if answers is not None:
            a_ids, a_mask, labels = self.answer_block(answers)
            shape = tuple(ids.shape)
            for k, v in list(inputs.items()):
                if not torch.is_tensor(v) or tuple(v.shape[:2]) != shape or v.dim() != 2:
                    continue
                if k == "input_ids":
                    inputs[k] = torch.cat([v, a_ids.to(v.dtype)], dim=1)
                elif k == "attention_mask":
                    inputs[k] = torch.cat([v, a_mask.to(v.dtype)], dim=1)
                elif k == "token_type_ids":
                    inputs[k] = torch.cat([v, (a_mask * self.answer_type_id).to(v.dtype)], dim=1)
                else:
                    inputs[k] = torch.cat([v, torch.zeros_like(a_ids, dtype=v.dtype)], dim=1)
            b.answer_len, b.labels = a_ids.shape[1], labels
        if self.explicit_positions and "attention_mask" in inputs:
            inputs["position_ids"] = _positions(inputs["attention_mask"])
        for k, v in list(inputs.items()):
            if torch.is_tensor(v):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(self.dtype)
                inputs[k] = v
        return b

    def forward_logits(self, inputs: dict[str, Any], keep: int) -> Any:
        kw = {"logits_to_keep": keep} if self._keep_arg else {}
        out = self.model(**inputs, use_cache=False, **kw)
        return out.logits[:, -keep:, :]

    def stop_ids(self) -> list[int]:
        ids = [self.tokenizer.eos_token_id]
        return [int(i) for i in ids if i is not None]

    def generate(self, images: list[Any], question: str, max_new_tokens: int) -> list[str]:
        import torch

        inputs = self.encode_prompts(images, self.build_prompt(question))
        inputs.pop("labels", None)
        inputs = {k: (v.to(self.device).to(self.dtype) if torch.is_tensor(v) and v.is_floating_point()
                      else v.to(self.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.stop_ids() or None, pad_token_id=self.pad_id())
        return [t.strip() for t in self.tokenizer.batch_decode(out[:, n:], skip_special_tokens=True)]


class Idefics3Backend(HFBackend):
    family = "idefics3"
    answer_sep = " "  # "Assistant:" then " Yes."
    explicit_positions = True
    lm_pattern = r"(^|\.)text_model\."
    default_targets = ("q_proj", "k_proj", "v_proj", "o_proj")

    def lm_regex_core(self) -> str:
        return r"text_model\."

    def build_prompt(self, question: str) -> str:
        if getattr(self.processor, "chat_template", None):
            return super().build_prompt(question)
        # The template Idefics3 and SmolVLM ship, for folders saved without it.
        bos = self.tokenizer.bos_token or ""
        return f"{bos}User:<image>{question}<end_of_utterance>\nAssistant:"

    def end_of_answer(self) -> str:
        return "<end_of_utterance>"

    def stop_ids(self) -> list[int]:
        ids = [self.tokenizer.convert_tokens_to_ids("<end_of_utterance>"), self.tokenizer.eos_token_id]
        return [int(i) for i in ids if i is not None and i != self.tokenizer.unk_token_id]

    def processor_kwargs(self) -> dict[str, Any]:
        return {} if self.image_splitting is None else {"do_image_splitting": self.image_splitting}


class PaliGemmaBackend(HFBackend):
    family = "paligemma"
    answer_sep = ""  # the processor ends the prompt with "\n"
    explicit_positions = False
    answer_type_id = 1  # suffix tokens: causal attention
    lm_pattern = r"(^|\.)language_model\."

    def lm_regex_core(self) -> str:
        return r"language_model\."

    def build_prompt(self, question: str) -> str:
        return f"<image>answer en {question}"

    def prompt_tail(self, prompt: str) -> str:
        return prompt.replace("<image>", "") + "\n"

    def encode_prompts(self, images: list[Any], prompt: str) -> dict[str, Any]:
        enc = self.processor(text=[prompt] * len(images), images=[[im] for im in images], return_tensors="pt",
                             padding=True)
        return dict(enc)


class MoondreamBackend(Backend):
    """moondream2, revision 2024-08-26: `encode_image`, `input_embeds` and a Phi
    `text_model` (its own code, loaded with trust_remote_code)."""

    family = "moondream"
    answer_sep = " "
    lm_pattern = r"(^|\.)text_model\."
    default_targets = ("Wqkv", "out_proj")

    def __init__(self, path: Path, cfg: dict[str, Any], model: Any, tokenizer: Any, device: str, dtype: Any,
                 question: str = QUESTION) -> None:
        for attr in ("encode_image", "input_embeds", "text_model"):
            if not hasattr(model, attr):
                api = "the 2025 API (model.query)" if hasattr(model, "query") else "an unknown API"
                raise VLMError(f"{path} is a moondream2 revision with {api}, whose layers peft's LoRA cannot "
                               f"wrap; MAI needs revision {MOONDREAM_REVISION}: "
                               f"`huggingface-cli download {MOONDREAM_REPO} --revision {MOONDREAM_REVISION} "
                               f"--local-dir {path}`")
        super().__init__(path, cfg, model, tokenizer, device, dtype, question)

    def lm_regex_core(self) -> str:
        return r"text_model\."

    def build_prompt(self, question: str) -> str:
        return f"<image>\n\nQuestion: {question}\n\nAnswer:"

    def prompt_tail(self, prompt: str) -> str:
        return prompt.split("<image>", 1)[-1]

    def _embeds(self, images: list[Any], prompt: str, answers: list[bool] | None) -> Batch:
        import torch

        img = self.model.encode_image(images)
        emb = self.model.text_model.get_input_embeddings()
        rows = [self.model.input_embeds(prompt, img[i : i + 1], self.tokenizer)[0] for i in range(len(images))]
        a_len, labels, a_emb, a_mask = 0, None, None, None
        if answers is not None:
            a_ids, a_mask, labels = self.answer_block(answers)
            a_len = a_ids.shape[1]
            a_emb = emb(a_ids.to(self.device))
        t = max(r.shape[0] for r in rows)
        dim = rows[0].shape[-1]
        x = torch.zeros((len(rows), t + a_len, dim), dtype=rows[0].dtype, device=self.device)
        mask = torch.zeros((len(rows), t + a_len), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            x[i, t - r.shape[0] : t] = r
            mask[i, t - r.shape[0] : t] = 1
        if a_emb is not None:
            x[:, t:] = a_emb.to(x.dtype)
            mask[:, t:] = a_mask.to(self.device)
        inputs = {"inputs_embeds": x.to(self.dtype), "attention_mask": mask, "position_ids": _positions(mask)}
        return Batch(inputs, a_len, labels)

    def batch(self, images: list[Any], answers: list[bool] | None = None) -> Batch:
        return self._embeds(images, self.prompt, answers)

    def forward_logits(self, inputs: dict[str, Any], keep: int) -> Any:
        out = self.model.text_model(**inputs, use_cache=False)
        return out.logits[:, -keep:, :]

    def generate(self, images: list[Any], question: str, max_new_tokens: int) -> list[str]:
        import torch

        b = self._embeds(images, self.build_prompt(question), None)
        with torch.inference_mode():
            out = self.model.text_model.generate(
                inputs_embeds=b.inputs["inputs_embeds"], attention_mask=b.inputs["attention_mask"],
                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.pad_id())
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def _auto_image_text_model() -> Any:
    import transformers

    cls = getattr(transformers, "AutoModelForImageTextToText", None) or getattr(transformers,
                                                                               "AutoModelForVision2Seq", None)
    if cls is None:
        raise VLMError("this transformers has neither AutoModelForImageTextToText nor AutoModelForVision2Seq; "
                       "pip install -U 'mai-detect[vlm]'")
    return cls


def load_base(base: str | os.PathLike[str], trust_remote_code: bool = False, device: str = "auto",
              dtype: str | None = None, question: str = QUESTION,
              image_splitting: bool | None = None) -> Backend:
    """Load a base model from a local folder (never the network)."""
    p, cfg = check_base(base, trust_remote_code)
    require_vlm_extra()
    quiet_transformers()
    dev = torch_device(device)
    dt = pick_dtype(dev, dtype)
    fam = family_of(cfg)
    common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        if fam == "moondream":
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(p, dtype=dt, **common)
            tok = AutoTokenizer.from_pretrained(p, **common)
            model.to(dev).eval()
            return MoondreamBackend(p, cfg, model, tok, dev, dt, question)
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(p, **common)
        model = _auto_image_text_model().from_pretrained(p, dtype=dt, **common)
    except VLMError:
        raise
    except (OSError, ValueError, KeyError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VLMError(f"cannot load the VLM base in {p}: {first}. {download_hint(p)}") from e
    model.to(dev).eval()
    cls = {"idefics3": Idefics3Backend, "paligemma": PaliGemmaBackend}.get(fam, HFBackend)
    return cls(p, cfg, model, processor, dev, dt, question, image_splitting)
