"""The VLM layer on CPU with tiny random bases built here (no network, no weights):
answer tokens, P(Yes) on a batch, LoRA steps, `mai train vlm` and the adapter's
round trip, `mai eval` on an adapter, the scanner's routing of uncertain images,
paired data with a stand-in generator, and the errors for missing folders and
remote code."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from support.data import make_folder  # noqa: E402
from support.scan import read_jsonl, run_cli, tiny_pngs  # noqa: E402
from support.vlm import StandInGenerator, make_tiny_idefics3, noise_image  # noqa: E402

from mai.vlm import QUESTION, VLMError, VLMScorer, is_vlm_adapter  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_idefics3(tmp_path_factory.mktemp("vlm") / "tiny-idefics3")


@pytest.fixture(scope="module")
def scorer(base: Path) -> VLMScorer:
    return VLMScorer(base, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("vlmdata") / "set", n=16)


@pytest.fixture(scope="module")
def adapter(base: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained through the command line: 2 epochs of 7 steps on 28 images."""
    from mai_train.cli import cli

    out = tmp_path_factory.mktemp("vlmrun") / "lora"
    r = CliRunner().invoke(cli, ["train", "vlm", "--base", str(base), "--data", str(data), "--out", str(out),
                                 "--epochs", "2", "--batch-size", "4", "--grad-accum", "1", "--lr", "2e-2",
                                 "--device", "cpu", "--target-modules", "q_proj,v_proj,o_proj"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return out


def test_answer_token_ids_are_the_first_tokens_of_yes_and_no(scorer: VLMScorer) -> None:
    b = scorer.backend
    tok = b.tokenizer
    assert b.prompt == "<|endoftext|>User:<image>Is this image AI-generated?<end_of_utterance>\nAssistant:"
    pre = tok(b.prompt, add_special_tokens=False)["input_ids"]
    for answer, want in (("Yes.", b.yes_id), ("No.", b.no_id)):
        full = tok(b.prompt + " " + answer + "<end_of_utterance>", add_special_tokens=False)["input_ids"]
        assert full[: len(pre)] == pre
        assert full[len(pre)] == want  # the first token after the prompt, leading space merged in
        assert tok.decode([want]).strip() == answer[:-1]
    assert b.yes_id != b.no_id
    assert tok.convert_ids_to_tokens([b.yes_id, b.no_id]) == ["ĠYes", "ĠNo"]
    assert b.yes_ids[-1] == tok.convert_tokens_to_ids("<end_of_utterance>")


def test_prompt_without_a_chat_template(tmp_path: Path) -> None:
    s = VLMScorer(make_tiny_idefics3(tmp_path / "plain", chat_template=False), device="cpu")
    assert s.backend.prompt == f"<|endoftext|>User:<image>{QUESTION}<end_of_utterance>\nAssistant:"


def test_p_yes_on_a_batch_is_the_softmax_of_two_logits(scorer: VLMScorer) -> None:
    import torch

    images = [noise_image(i, w=30 + 7 * i, h=32) for i in range(5)]  # any sizes and modes
    images[1] = images[1].convert("L")
    got = scorer.score(images)
    assert len(got) == 5 and all(0.0 <= p <= 1.0 for p in got)
    # By hand: the processor, a plain forward, the last position's logits.
    b = scorer.backend
    rgb = [im.convert("RGB") for im in images]
    enc = b.processor(text=[b.prompt] * 5, images=[[im] for im in rgb], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = b.model(**enc).logits[:, -1, :]
    manual = torch.softmax(logits[:, [b.yes_id, b.no_id]], dim=-1)[:, 0]
    assert torch.allclose(torch.tensor(got), manual, atol=1e-5)
    # Batching does not change a score.
    one = [scorer.score([im])[0] for im in images[:3]]
    assert one == pytest.approx(got[:3], abs=1e-5)


def test_lora_steps_lower_the_answer_loss(base: Path) -> None:
    import torch

    from mai.vlm.load import load_base
    from mai_train.vlm.train import VLMTrainConfig, attach_lora

    backend = load_base(base, device="cpu")
    torch.manual_seed(0)
    peft_model, regex = attach_lora(backend, VLMTrainConfig(base=str(base), data="", out=""))
    assert "text_model" in regex
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "text_model" in n for n in trainable)  # vision tower frozen
    images = [noise_image(i) for i in range(4)]
    answers = [True, False, True, False]
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    peft_model.train()
    losses = []
    for _ in range(8):
        loss, _ = backend.loss(images, answers)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_unknown_target_modules_are_a_clear_error(base: Path) -> None:
    from mai.vlm.load import load_base
    from mai_train.vlm.train import VLMTrainConfig, attach_lora

    backend = load_base(base, device="cpu")
    with pytest.raises(VLMError, match="q_proj"):  # the message lists the real names
        attach_lora(backend, VLMTrainConfig(base=str(base), data="", out="", target_modules=["Wqkv"]))


def test_train_vlm_writes_a_calibrated_adapter(adapter: Path, base: Path, data: Path) -> None:
    assert {"adapter_config.json", "adapter_model.safetensors", "mai.json", "val_scores.csv"} <= {
        p.name for p in adapter.iterdir()}
    assert is_vlm_adapter(adapter)
    meta = json.loads((adapter / "mai.json").read_text())
    assert meta["schema"] == "mai.vlm/1" and meta["question"] == QUESTION
    assert meta["base"]["name"] == "tiny-idefics3" and len(meta["base"]["config_sha256"]) == 64
    lo, hi = meta["uncertain"]
    assert lo <= meta["threshold"] <= hi
    assert meta["data"]["split_rule"].startswith("val if")
    assert meta["data"]["counts"]["train_balanced_per_epoch"] % 2 == 0
    hist = meta["train"]["history"]
    assert len(hist) == 2 and hist[1]["train_loss"] < hist[0]["train_loss"]
    assert meta["metrics"]["val"]["roc_auc"] is not None
    assert meta["versions"]["transformers"] and meta["versions"]["peft"]


def test_a_cut_run_resumes_and_ends_as_the_uncut_one(base: Path, data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the checkpoint at optimizer step 3 (mid-epoch, 7 steps an
    epoch), then run again: the same adapter as a run never cut (LoRA dropout
    included: the random state is part of the checkpoint)."""
    import torch
    from safetensors.torch import load_file

    from mai_train.vlm import train as vt

    def cfg(out: Path) -> vt.VLMTrainConfig:
        return vt.VLMTrainConfig(base=str(base), data=str(data), out=str(out), epochs=2, batch_size=4, grad_accum=1,
                                 lr=2e-2, device="cpu", target_modules=["q_proj", "v_proj"], checkpoint_every=3,
                                 lora_dropout=0.2)

    vt.train_vlm(cfg(tmp_path / "whole"))
    real = vt._save_state

    def save_then_die(obj: dict, path: Path) -> None:
        real(obj, path)
        if obj["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(vt, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        vt.train_vlm(cfg(tmp_path / "cut"))
    monkeypatch.setattr(vt, "_save_state", real)
    assert (tmp_path / "cut" / vt.STATE_NAME).is_file() and not (tmp_path / "cut" / "mai.json").exists()
    with pytest.raises(vt.VLMTrainError, match="epochs=2, not 3"):
        vt.train_vlm(dataclasses.replace(cfg(tmp_path / "cut"), epochs=3))
    vt.train_vlm(cfg(tmp_path / "cut"))
    assert not (tmp_path / "cut" / vt.STATE_NAME).exists()  # gone with the finished adapter
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    ha = json.loads((tmp_path / "whole" / "mai.json").read_text())["train"]["history"]
    hb = json.loads((tmp_path / "cut" / "mai.json").read_text())["train"]["history"]
    assert [r[k] for r in ha for k in ("train_loss", "val_roc_auc")] == pytest.approx(
        [r[k] for r in hb for k in ("train_loss", "val_roc_auc")])


def test_adapter_reload_gives_identical_scores(adapter: Path, data: Path) -> None:
    from mai.vlm.images import open_image

    rows = list(csv.DictReader((adapter / "val_scores.csv").open()))
    s = VLMScorer(None, adapter, device="cpu")  # the base comes from mai.json
    assert s.model_id == json.loads((adapter / "mai.json").read_text())["model_id"]
    got = s.score([open_image(data / r["path"]) for r in rows])
    assert got == pytest.approx([float(r["score"]) for r in rows], abs=1e-6)
    base_only = VLMScorer(s.base_path, device="cpu").score([open_image(data / rows[0]["path"])])
    assert base_only[0] != pytest.approx(got[0], abs=1e-4)  # the adapter is in effect


def test_mai_eval_reads_a_vlm_adapter(adapter: Path, data: Path) -> None:
    from mai_train.cli import cli

    r = CliRunner().invoke(cli, ["eval", "--model", str(adapter), "--data", str(data), "--split", "val", "--json"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    rep = json.loads(r.output)
    meta = json.loads((adapter / "mai.json").read_text())
    assert rep["model"] == meta["model_id"] and rep["kind"] == "vlm"
    assert rep["threshold"] == meta["threshold"] and rep["uncertain"] == meta["uncertain"]
    assert rep["accuracy"] == meta["metrics"]["val"]["accuracy"]
    assert set(rep["per_source"]) == {"set"}
    r = CliRunner().invoke(cli, ["eval", "--model", str(adapter), "--data", str(data), "--split", "val"])
    assert r.exit_code == 0 and "AUC" in r.output and "uncertain band" in r.output


def test_scanner_sends_exactly_the_uncertain_images_to_the_vlm(
        onnx_model_dir: Path, adapter: Path, base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mai.vlm.images import open_image

    lib = tmp_path / "lib"
    tiny_pngs(lib, 8)
    common = [str(lib), "--model", str(onnx_model_dir), "--device", "cpu", "--threads", "1", "--workers", "0",
              "--no-state"]
    code, _, _ = run_cli([*common, "--jsonl", str(tmp_path / "cnn.jsonl"), "--no-uncertain"], capsys)
    assert code == 0
    cnn = {r["path"]: r["scores"]["cnn"] for r in read_jsonl(tmp_path / "cnn.jsonl")}
    s = sorted(cnn.values())
    assert len(set(s)) == len(s)
    # A band that holds the middle four scores (and the threshold between them).
    lo, hi, t = (s[1] + s[2]) / 2, (s[5] + s[6]) / 2, (s[3] + s[4]) / 2
    code, _, err = run_cli([*common, "--jsonl", str(tmp_path / "vlm.jsonl"), "--threshold", repr(t),
                            "--uncertain", f"{lo!r},{hi!r}", "--vlm", str(base), "--vlm-adapter", str(adapter)],
                           capsys)
    assert code == 0, err
    recs = {r["path"]: r for r in read_jsonl(tmp_path / "vlm.jsonl")}
    inside = {p for p, c in cnn.items() if lo < c < hi}
    assert len(inside) == 4
    assert {p for p, r in recs.items() if r["stage"] == "vlm"} == inside
    meta = json.loads((adapter / "mai.json").read_text())
    direct = VLMScorer(base, adapter, device="cpu")
    for p, r in recs.items():
        assert r["scores"]["cnn"] == pytest.approx(cnn[p], abs=1e-6)
        if p in inside:
            assert r["scores"]["vlm"] is not None and r["score"] == r["scores"]["vlm"]
            assert r["verdict"] == ("synthetic" if r["scores"]["vlm"] >= meta["threshold"] else "authentic")
            assert r["scores"]["vlm"] == pytest.approx(direct.score([open_image(p)])[0], abs=1e-5)
        else:
            assert r["scores"]["vlm"] is None and r["stage"] == "cnn" and r["verdict"] != "uncertain"
    assert "vlm: 4 uncertain images sent to" in err
    # Without --vlm the same images stay uncertain.
    code, _, _ = run_cli([*common, "--jsonl", str(tmp_path / "plain.jsonl"), "--threshold", repr(t),
                          "--uncertain", f"{lo!r},{hi!r}"], capsys)
    plain = {r["path"]: r for r in read_jsonl(tmp_path / "plain.jsonl")}
    assert {p for p, r in plain.items() if r["verdict"] == "uncertain"} == inside


def test_scanner_vlm_option_errors(onnx_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny_pngs(tmp_path / "lib", 1)
    common = [str(tmp_path / "lib"), "--model", str(onnx_model_dir), "--workers", "0", "--no-state"]
    code, _, err = run_cli([*common, "--vlm-adapter", str(tmp_path)], capsys)
    assert code == 2 and "--vlm-adapter needs --vlm" in err
    code, _, err = run_cli([*common, "--vlm", str(tmp_path / "models" / "moondream2")], capsys)
    assert code == 2 and "huggingface-cli download vikhyatk/moondream2 --revision 2024-08-26" in err
    remote = _remote_code_folder(tmp_path / "md")
    code, _, err = run_cli([*common, "--vlm", str(remote)], capsys)
    assert code == 2 and "--trust-remote-code" in err


def _remote_code_folder(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "config.json").write_text(json.dumps({
        "model_type": "moondream1", "architectures": ["Moondream"],
        "auto_map": {"AutoConfig": "configuration_moondream.MoondreamConfig",
                     "AutoModelForCausalLM": "moondream.Moondream"}}))
    return p


def test_missing_base_folders_say_what_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VLMError) as e:
        VLMScorer(tmp_path / "moondream2")
    msg = str(e.value)
    assert f"huggingface-cli download vikhyatk/moondream2 --revision 2024-08-26 --local-dir {tmp_path / 'moondream2'}" \
        in msg and "never downloads" in msg
    with pytest.raises(VLMError, match="HuggingFaceTB/SmolVLM-256M-Instruct"):
        VLMScorer(tmp_path / "SmolVLM-256M-Instruct")
    monkeypatch.setenv("MAI_HOME", str(tmp_path / "home"))
    with pytest.raises(VLMError, match=str(tmp_path / "home" / "models")):  # a bare name: where it goes
        VLMScorer("moondream2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VLMError, match="no config.json"):
        VLMScorer(tmp_path / "empty")
    with pytest.raises(VLMError, match="adapter folder not found"):
        VLMScorer(tmp_path / "empty", adapter=tmp_path / "nope")


def test_remote_code_needs_the_flag(tmp_path: Path) -> None:
    p = _remote_code_folder(tmp_path / "moondream2")
    with pytest.raises(VLMError, match="--trust-remote-code"):
        VLMScorer(p)


def test_bare_names_resolve_in_the_models_folder(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mai.vlm.load import resolve_base

    monkeypatch.setenv("MAI_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(base)
    assert resolve_base("tiny") == tmp_path / "models" / "tiny"


def test_pairs_with_a_stand_in_generator(scorer: VLMScorer, tmp_path: Path) -> None:
    from mai_train.data import is_val, open_dataset
    from mai_train.vlm.pair import DiffusersGenerator, make_pairs

    real = tmp_path / "photos"
    (real / "sub").mkdir(parents=True)
    for i in range(5):
        noise_image(100 + i, w=64, h=48).save(real / ("sub" if i % 2 else "") / f"p{i}.jpg", quality=95)
    (real / "broken.png").write_bytes(b"not an image")
    gen = StandInGenerator()
    manifest = make_pairs(real, tmp_path / "pairs", lambda ims: scorer.caption(ims, max_new_tokens=6), gen)
    # Sorted walk: broken.png (index 0, skipped), p0, p2, p4, sub/p1, sub/p3; seed = SEED + index.
    assert [s for _, s in gen.calls] == [1, 2, 3, 4, 5]
    assert all(c.isprintable() for c, _ in gen.calls)
    ds = open_dataset(manifest)
    assert ds.counts() == {"real": 5, "fake": 5} and ds.sources() == ["stand-in-gen"]
    by_stem: dict[str, list] = {}
    for it in ds.items:
        by_stem.setdefault(Path(it.relpath).name, []).append(it)
    assert len(by_stem) == 5
    from PIL import Image

    for pair in by_stem.values():
        assert sorted(i.label for i in pair) == [0, 1]
        assert is_val(pair[0].relpath) == is_val(pair[1].relpath)  # twins on one side of the split
        sizes = {Image.open(i.loc).size for i in pair}
        formats = {Image.open(i.loc).format for i in pair}
        assert sizes == {(48, 40)} and formats == {"JPEG"}
    lines = [json.loads(x) for x in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert all(x["caption"] and x["generator"] == "stand-in-gen" for x in lines)
    # A re-run continues: nothing is generated twice.
    make_pairs(real, tmp_path / "pairs", lambda ims: scorer.caption(ims, max_new_tokens=6), gen)
    assert len(gen.calls) == 5
    with pytest.raises(VLMError, match="huggingface-cli download"):
        DiffusersGenerator(tmp_path / "no-such-generator")
    from mai_train.cli import cli

    r = CliRunner().invoke(cli, ["data", "pair", "--real", str(real), "--out", str(tmp_path / "p2"), "--vlm",
                                 str(scorer.base_path), "--generator", str(tmp_path / "sdxl-turbo")])
    assert isinstance(r.exception, VLMError) and "stabilityai/sdxl-turbo" in str(r.exception)


def test_scanner_help_and_import_stay_light() -> None:
    code = "import sys, scanner.cli; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--vlm" in r.stdout and "--trust-remote-code" in r.stdout
