"""The one ONNX Runtime session helper: every session in MAI opens here.

`--device auto|cuda|cpu`: CUDA (and TensorRT, opt-in with MAI_TENSORRT=1) only
where it really loads, the CPU provider otherwise. ONNX Runtime lists CUDA as
available on machines without a GPU and then falls back to the CPU silently,
printing errors; so we ask for CUDA only when the driver library loads, hide
ONNX Runtime's own log lines, check the providers the session really got, and
say in one quiet line which one runs.

Precision follows one rule, `precisions_for`: fp16 on CUDA; on the CPU int8 where
it has int8 dot-product instructions (VNNI, AMX, Arm dot product) and fp32
elsewhere. It picks the file in a model folder, the graph a stored int8 model is
expanded into (`mai.graphs.expand`), and a probe's backbone graph
(`mai.backbone.feature_graph`). int8 is a backbone graph's precision only: a probe
whose folder ships static calibration ranges (`int8.json`, `mai.quantize`) runs its
backbone in int8; every other model runs in the next precision of the rule.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mai.artifact import ArtifactError, model_dir
from mai.errors import MaiError
from mai.graphs import COMPACT_SUFFIX, GraphError, is_compact
from mai.preprocess import PreprocessSpec

DEVICES = ("auto", "cuda", "cpu")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


class SessionError(MaiError):
    """A model that cannot be opened, or a device that cannot be used."""


class BackboneUnavailable(SessionError):
    """A probe model whose backbone is not installed, of another version, or altered."""


def _driver_loads() -> str | None:
    """None when the NVIDIA driver library loads, else why not."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
        return None
    except OSError as e:
        return f"no NVIDIA driver ({name}: {e})"


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send whatever is printed on stdout, by Python or by C code, to stderr while
    the block runs: stdout carries JSON Lines records, and libraries
    (onnxruntime.preload_dlls(), Ray starting) print their complaints there."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def gpu_providers(ort: Any) -> tuple[list[str], str | None]:
    """The GPU providers worth asking for here, or [] and the reason."""
    available = ort.get_available_providers()
    if CUDA not in available:
        return [], "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    why = _driver_loads()
    if why:
        return [], why
    if hasattr(ort, "preload_dlls"):
        # With torch's NVIDIA wheels installed this finds CUDA and cuDNN there.
        with stdout_to_stderr(), contextlib.suppress(Exception):
            ort.preload_dlls()
    wanted = [CUDA]
    if os.environ.get("MAI_TENSORRT") == "1" and TENSORRT in available:
        wanted.insert(0, TENSORRT)
    return wanted, None


@dataclass
class OnnxModel:
    """An opened MAI ONNX model: its session, metadata and preprocessing spec.

    A probe model (metadata `mai.backbone`) is two graphs: `session` is the
    backbone's feature graph (uint8 images in, on the chosen provider) and `head`
    the small head from the model file (features in, logit and prob out, on the
    CPU). `predict` and `predict_bound` chain them, so callers see one model."""

    path: Path
    session: Any
    provider: str
    meta: dict[str, str]
    fallback_reason: str | None = None
    head: Any = None
    feature: str | None = None  # the feature graph's output the head reads
    backbone_precision: str | None = None  # a probe's feature graph: fp32, fp16 or int8
    source: Path | None = None  # the file resolved: `path` itself, or the int8 file `path` was expanded from

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_json(self.meta["mai.preprocess"])

    @property
    def model_id(self) -> str:
        return self.meta["mai.model_id"]

    @property
    def threshold(self) -> float:
        return float(self.meta["mai.threshold"])

    @property
    def uncertain(self) -> tuple[float, float]:
        lo, hi = json.loads(self.meta["mai.uncertain"])
        return float(lo), float(hi)

    @property
    def precision(self) -> str:
        """What the scores are computed in: a probe's backbone graph, else the file's."""
        return self.backbone_precision or self.meta.get("mai.precision", "fp32")

    @property
    def device(self) -> str:
        return "cpu" if self.provider == CPU else "cuda"

    @property
    def backbone(self) -> str | None:
        return json.loads(self.meta["mai.backbone"])["name"] if "mai.backbone" in self.meta else None

    def describe(self) -> str:
        short = self.provider.replace("ExecutionProvider", "")
        why = f" ({self.fallback_reason})" if self.fallback_reason else ""
        on = f" (backbone {self.backbone} {self.backbone_precision})" if self.backbone else ""
        return f"{self.model_id} {self.precision}{on} on ONNX Runtime {short}{why}"

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, 3) at the model's input size -> (logit, prob), float32 (N,)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise SessionError(f"expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if self.head is not None:
            (feats,) = self.session.run([self.feature], {"image": np.ascontiguousarray(images)})
            return self._head(feats)
        logit, prob = self.session.run(["logit", "prob"], {"image": np.ascontiguousarray(images)})
        return logit, prob

    def _head(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logit, prob = self.head.run(["logit", "prob"], {"features": np.asarray(feats, np.float32)})
        return logit, prob

    def predict_bound(self, data_ptr: int, shape: tuple[int, ...], device: str = "cuda",
                      device_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`predict` for a contiguous uint8 (N, H, W, 3) batch that already lies at
        `data_ptr` in `device` memory ("cuda" or "cpu"): ONNX Runtime reads it in
        place through IO binding, so a batch decoded on the GPU never crosses to
        the host. Only the two small outputs come back. The caller keeps the
        memory alive, and finished writing it, until this returns."""
        if len(shape) != 4 or shape[-1] != 3:
            raise SessionError(f"expected (N, H, W, 3), got {shape}")
        if device == "cuda" and self.provider == CPU:
            raise SessionError("a batch in GPU memory needs the model on CUDA; open it with device='cuda'")
        binding = self.session.io_binding()
        binding.bind_input("image", device, device_id, np.uint8, list(shape), data_ptr)
        outputs = [self.feature] if self.head is not None else ["logit", "prob"]
        for name in outputs:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        got = binding.copy_outputs_to_cpu()
        if self.head is not None:
            return self._head(got[0])
        logit, prob = got
        return logit, prob


def _session(ort: Any, f: Path, opts: Any, providers: list[str]) -> Any:
    try:
        return ort.InferenceSession(str(f), sess_options=opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own unrelated types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SessionError(f"cannot open {f} with ONNX Runtime: {first}") from e


REQUIRED_META = ("mai.schema", "mai.model_id", "mai.preprocess", "mai.threshold", "mai.uncertain")


PRECISIONS = ("fp32", "fp16", "int8")
INT8_CALIBRATION = "int8.json"  # a probe's static int8 ranges, in its model folder


def precisions_for(device: str, prefer: str | None = None) -> tuple[str, ...]:
    """The one precision rule, best first: fp16 on CUDA (tensor cores); on the CPU
    int8 where the CPU has int8 dot-product instructions (2-3x fp32 there), else fp32
    (ONNX Runtime's CPU provider runs fp16 slower, and int8 gains little without
    them). `prefer` goes first when given."""
    from mai.quantize import cpu_has_fast_int8

    if device == "cuda":
        order: tuple[str, ...] = ("fp16", "fp32", "int8")
    elif cpu_has_fast_int8():
        order = ("int8", "fp32", "fp16")
    else:
        order = ("fp32", "int8", "fp16")
    if prefer is None:
        return order
    if prefer not in order:
        raise SessionError(f"unknown precision {prefer!r}; use fp32, fp16 or int8")
    return (prefer, *(p for p in order if p != prefer))


def resolve_onnx(path: str | os.PathLike[str] | None, device: str, prefer: str | None = None) -> Path:
    """A .onnx file from a file, a model folder, or None (the default model).

    In a folder: `model.<precision>.onnx` in `precisions_for(device, prefer)`'s
    order, else the stored int8 form `model.int8.onnx` (which `open_model` expands).
    """
    p = model_dir(path)
    if p.is_file():
        return p
    if not p.exists():
        raise SessionError(f"model not found: {p}")
    for prec in precisions_for(device, prefer):
        if prec == "int8":  # model.int8.onnx is the stored form, found below
            continue
        f = p / f"model.{prec}.onnx"
        if f.is_file():
            return f
    f = p / f"model{COMPACT_SUFFIX}"
    if f.is_file():
        return f
    raise SessionError(f"{p} holds no model.fp32.onnx, model.fp16.onnx or model{COMPACT_SUFFIX}; "
                       f"create them with `mai export onnx --model {p}`")


def usable_default(log: Any = None) -> Path:
    """The default model's folder, or the fallback's (said in one line to `log`) when
    the default needs a backbone that is not installed, of another version, or altered."""
    from mai.artifact import DEFAULT_NAME, FALLBACK_NAME, load_artifact, shipped_dir
    from mai.backbone import BackboneError, feature_graph, get_backbone

    art = load_artifact(None)
    if "backbone" not in art.meta:
        return art.path
    try:
        feature_graph(get_backbone(art.meta["backbone"]["name"]), log)
        return art.path
    except BackboneError as e:
        if log is not None:
            log(f"model: {DEFAULT_NAME} cannot run: {e}; scanning with {FALLBACK_NAME} instead "
                "(trained on 32x32 CIFAKE, weak on full-size photos)")
        return shipped_dir(FALLBACK_NAME)


def open_model(path: str | os.PathLike[str] | None = None, device: str = "auto", threads: int | None = None,
               log: Any = None, precision: str | None = None) -> OnnxModel:
    """Open a MAI ONNX model on the best provider `device` allows.

    `log` (a callable taking one line) hears which provider runs. `precision`
    (fp32, fp16 or int8) overrides the device's rule (`precisions_for`), e.g. to
    measure fp32 on CUDA; a folder without that file gives the other. int8 applies
    to a probe whose folder has `int8.json` (its backbone graph in int8); any other
    model, or a probe whose int8 graph cannot be built (said to `log`), takes the
    next precision of the rule.
    """
    if device not in DEVICES:
        raise SessionError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    import onnxruntime as ort

    # Severity 3 hides ONNX Runtime's own warnings about providers that fail to
    # load; set before any session exists (SessionOptions' level does not reach them).
    ort.set_default_logger_severity(3)
    providers: list[str] = []
    reason: str | None = None
    if device in ("auto", "cuda"):
        providers, reason = gpu_providers(ort)
        if device == "cuda" and not providers:
            raise SessionError(f"--device cuda: CUDA cannot be used here: {reason}; use --device cpu or auto")
    order = precisions_for("cuda" if providers else "cpu", precision)
    file_order = [p for p in order if p != "int8"]
    want = file_order[0]
    f = source = resolve_onnx(path, "cuda" if providers else "cpu", want)
    if is_compact(f):  # stored int8: expanded once per machine into the precision wanted here
        from mai.graphs import expand

        try:
            f = expand(f, want, log)
        except GraphError as e:
            raise SessionError(str(e)) from e
        except Exception as e:  # noqa: BLE001 - onnx raises its own types on a broken file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SessionError(f"cannot expand {f}: {first}") from e
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not providers:
        # ONNX Runtime's threads sleep between parallel steps instead of spinning: a scan's
        # decode workers (and anything else on the machine) need those cores. On 2 shared
        # cores: mai-scan 1.3-1.75x faster end to end, model only no slower (benchmarks/README).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = _session(ort, f, opts, [*providers, CPU])
    head, feature, bb_precision = None, None, None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if "mai.backbone" in meta:
        # A probe: the file is its head; the backbone's feature graph does the heavy work.
        from mai.backbone import BackboneError, feature_graph, get_backbone

        head_opts = ort.SessionOptions()
        head_opts.log_severity_level = 3
        head_opts.intra_op_num_threads = 1
        head = _session(ort, f, head_opts, [CPU])
        try:
            ref = json.loads(meta["mai.backbone"])
            bb = get_backbone(ref["name"])
            feature = ref["feature"]
            if ref.get("sha256") != bb.sha256:
                raise BackboneError(f"{f} was trained on another build of {bb.name} than this MAI knows; "
                                    "upgrade MAI or re-train the probe")
            bb_precision, graph = want, None
            calibration = f.parent / INT8_CALIBRATION
            if order[0] == "int8" and calibration.is_file():
                try:
                    graph, bb_precision = feature_graph(bb, log, "int8", calibration), "int8"
                except GraphError as e:
                    if log is not None:
                        log(f"model: the int8 graph of {bb.name} cannot be built ({e}); using {want}")
            if graph is None:
                graph = feature_graph(bb, log, want)
            sess = _session(ort, graph, opts, [*providers, CPU])
        except BackboneError as e:
            raise BackboneUnavailable(f"{meta.get('mai.model_id', f)} needs its backbone: {e}") from e
        except (KeyError, TypeError, ValueError) as e:
            raise SessionError(f"{f}: malformed mai.backbone metadata ({e}); "
                               "re-create it with `mai train probe`") from e
    active = sess.get_providers()[0]
    if providers and active == CPU:
        reason = "the CUDA provider did not load"
        if device == "cuda":
            raise SessionError(f"--device cuda: {reason} (check CUDA 12/13 and cuDNN 9 libraries); use --device cpu")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise SessionError(f"{f} is not a MAI model (missing metadata {', '.join(missing)}); "
                           "export one with `mai export onnx`")
    model = OnnxModel(f, sess, active, meta, reason if device == "auto" and active == CPU and providers else None,
                      head, feature, bb_precision, source)
    try:
        _ = model.spec  # parse it now: a bad spec is an error at open, not mid-scan
    except MaiError as e:
        raise SessionError(f"{f}: {e}") from e
    if log is not None:
        log(f"model: {model.describe()}")
    return model


__all__ = ["OnnxModel", "SessionError", "BackboneUnavailable", "open_model", "usable_default", "resolve_onnx",
           "precisions_for", "gpu_providers", "ArtifactError"]
