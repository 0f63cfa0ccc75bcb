"""The GPU scan path on a CPU: its dispatch (chosen only where it can run, a clean
fallback otherwise) and its host-side logic, run end to end with torchvision's CPU
JPEG decoder standing in for nvJPEG and ONNX Runtime reading the batch in place
through IO binding. Figures on a real GPU are benchmarks/bench_gpu.py's job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps
from support.scan import encode, make_library, photo, run_cli, scan_env

from scanner.decode import read_chunk
from scanner.engine import EngineOptions
from scanner.engine_local import run
from scanner.records import Decision
from scanner.walk import walk

torch = pytest.importorskip("torch", reason="the GPU path needs torch and torchvision (the gpu extra)")
pytest.importorskip("torchvision")

from scanner import gpu as gpu_mod  # noqa: E402 - after the skip: it is only useful with torch
from scanner.gpu import GpuPathError, GpuStage, choose, upright  # noqa: E402


@pytest.fixture(scope="module")
def model() -> Any:
    from mai.session import open_model

    return open_model("mai-cnn-cifake", "cpu", 1)  # a trained model: scores that mean something


def _jpeg(w: int, h: int, seed: int, orientation: int = 1, **kw: Any) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    return encode(photo(w, h, seed=seed), "JPEG", exif=exif.tobytes(), quality=92, **kw)


def _collect(root: Path, model: Any, **kw: Any) -> dict[str, dict]:
    out: list[dict] = []
    run(walk([str(root)]), model, Decision(0.5), lambda r, e: out.append(r), **kw)
    return {os.path.basename(r["path"]): r for r in out}


def test_gpu_path_gives_the_cpu_paths_records(model: Any, tmp_path: Path) -> None:
    """Every file of the awkward library, plus EXIF turns, sizes and a progressive
    JPEG: the same records, field for field, as the CPU path at full size."""
    make_library(tmp_path)
    for o in range(1, 9):
        (tmp_path / f"orient{o}.jpg").write_bytes(_jpeg(300, 200, seed=o, orientation=o))
    (tmp_path / "big.jpg").write_bytes(_jpeg(1600, 1200, seed=20))
    (tmp_path / "prog.jpg").write_bytes(_jpeg(640, 480, seed=21, progressive=True))
    cpu = _collect(tmp_path, model, options=EngineOptions(workers=0, draft=False))
    stage = GpuStage(model.spec, device="cpu")
    assert stage.dtype == torch.float64  # exact resize where float64 is cheap
    got = _collect(tmp_path, model, options=EngineOptions(workers=0, gpu=stage, batch_size=8, readers=3))
    assert got.keys() == cpu.keys()
    for name in cpu:
        assert got[name] == cpu[name], name
    jpegs = [n for n, r in cpu.items() if r["format"] == "JPEG" and r["error"] is None]
    assert stage.stats.gpu == len(jpegs) - 1 == 13  # every JPEG but the CMYK one
    assert stage.stats.cpu["CMYK JPEG"] == 1 and stage.stats.cpu["PNG"] >= 5
    assert stage.stats.cpu["JPEG without an end marker"] == 1  # truncated.jpg: Pillow's error record
    assert cpu["truncated.jpg"]["error"]["kind"] == "decode"


class _Refusing:
    """torchvision.io with a decoder that refuses any JPEG carrying a marker
    comment, as nvJPEG refuses what it cannot decode."""

    def __init__(self, real: Any) -> None:
        self.real, self.ImageReadMode, self.calls = real, real.ImageReadMode, []

    def decode_jpeg(self, data: Any, **kw: Any) -> Any:
        items = data if isinstance(data, list) else [data]
        self.calls.append(len(items))
        if any(b"refuse-me" in bytes(t.numpy()) for t in items):
            raise RuntimeError("nvjpegDecode failed: unsupported JPEG (test)")
        return self.real.decode_jpeg(data, **kw)


def test_a_jpeg_the_gpu_refuses_is_decoded_on_the_cpu(model: Any, tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"ok{i}.jpg").write_bytes(_jpeg(120, 90, seed=i))
    (tmp_path / "odd.jpg").write_bytes(_jpeg(120, 90, seed=9, comment=b"refuse-me"))
    stage = GpuStage(model.spec, device="cpu")
    stage.tvio = _Refusing(stage.tvio)
    got = _collect(tmp_path, model, options=EngineOptions(workers=0, gpu=stage, batch_size=16, latency_s=5,
                                                            draft=False))
    cpu = _collect(tmp_path, model, options=EngineOptions(workers=0, draft=False))
    assert got == cpu  # the refused file is still scored, exactly as the CPU path scores it
    assert stage.tvio.calls[0] == 7 and stage.tvio.calls[1:] == [1] * 7  # batched, then one by one
    assert stage.stats.gpu == 6 and stage.stats.cpu == {"nvJPEG refused it": 1}
    assert "odd.jpg: nvjpegDecode failed" in stage.stats.refusals[0]
    assert "nvJPEG refused it: 1" in stage.stats.lines()[0]


def test_a_second_opinion_gets_the_gpu_paths_arrays(model: Any, tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"p{i}.jpg").write_bytes(_jpeg(100, 80, seed=i))
    (tmp_path / "q.png").write_bytes(encode(photo(100, 80, seed=5), "PNG"))
    seen: list[np.ndarray] = []

    class Echo:
        name, threshold = "echo", 0.5

        def score(self, images: list[np.ndarray], paths: list[str]) -> list[float]:
            seen.extend(images)
            return [0.9] * len(images)

    out: list[dict] = []
    stage = GpuStage(model.spec, device="cpu")
    run(walk([str(tmp_path)]), model, Decision(0.5, (0.0, 1.0)), lambda r, e: out.append(r),
        options=EngineOptions(workers=0, gpu=stage, latency_s=5), second_opinion=Echo())
    assert len(seen) == 5 and all(a.shape == (200, 200, 3) and a.dtype == np.uint8 for a in seen)
    assert {r["stage"] for r in out} == {"vlm"}


def test_reader_hands_over_bytes_and_frees_nothing_early(model: Any, tmp_path: Path) -> None:
    p = tmp_path / "turned.jpg"
    data = _jpeg(64, 32, seed=1, orientation=6)
    p.write_bytes(data + b"\0\0")  # zero padding after the end marker is common
    (d,) = read_chunk([str(p)], model.spec)
    assert d.error is None and d.cpu is None and d.array is None
    assert bytes(d.jpeg) == data + b"\0\0" and d.orientation == 6
    assert (d.facts["width"], d.facts["height"]) == (32, 64)  # upright, from the header alone
    stage = GpuStage(model.spec, device="cpu")
    probs = stage.infer([d], model)
    assert list(probs) == [0] and d.jpeg is None  # the bytes go once decoded


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_is_pillows_exif_transpose(orientation: int) -> None:
    a = np.array(photo(40, 24, seed=orientation))
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    ref = np.asarray(ImageOps.exif_transpose(Image.open(__import__("io").BytesIO(encode(im, "PNG", exif=exif)))))
    got = upright(torch.from_numpy(a), orientation).numpy()
    assert np.array_equal(got, ref)


def test_budgeted_chunks_keep_order_and_bounds() -> None:
    runs = gpu_mod._chunks(list("abcdef"), [5, 5, 20, 1, 1, 30], 10)
    assert runs == [["a", "b"], ["c"], ["d", "e"], ["f"]]
    assert gpu_mod._chunks([], [], 10) == []


# -- dispatch -----------------------------------------------------------------

class _Model:
    def __init__(self, device: str, spec: Any) -> None:
        self.device, self.spec = device, spec


def test_cpu_model_never_imports_torch() -> None:
    code = ("import sys; from mai.session import open_model; from scanner.gpu import choose; "
            "m = open_model('mai-cnn-cifake', 'cpu'); stage, line = choose(m, 'auto'); "
            "print(stage, line, 'torch' in sys.modules)")  # no stage, nothing to explain, no torch
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=scan_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None None False"


def test_dispatch_falls_back_with_the_reason(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_model = _Model("cuda", model.spec)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stage, why = choose(cuda_model, "auto")
    assert stage is None and why == "model on CUDA, GPU decode off: torch sees no CUDA device (a CPU-only torch " \
        "build, or no driver)"
    with pytest.raises(GpuPathError, match="--decoder gpu: the GPU path cannot run here: torch sees no CUDA"):
        choose(cuda_model, "gpu")
    with pytest.raises(GpuPathError, match="CPU provider"):
        choose(_Model("cpu", model.spec), "gpu")
    real = gpu_mod.importlib.util.find_spec
    monkeypatch.setattr(gpu_mod.importlib.util, "find_spec", lambda n: None if n == "torchvision" else real(n))
    assert "pip install 'mai-detect[gpu]'" in choose(cuda_model, "auto")[1]
    assert choose(cuda_model, "cpu") == (None, "--decoder cpu")
    with pytest.raises(GpuPathError, match="unknown decoder"):
        choose(cuda_model, "nvdec")


def test_dispatch_probes_nvjpeg_once(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA present but no GPU JPEG decoder (a CPU-only torchvision): the CPU path, saying why."""
    import torchvision.io

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def no_nvjpeg(*a: Any, **k: Any) -> Any:
        raise RuntimeError("Not compiled with GPU support")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_nvjpeg)
    stage, why = choose(_Model("cuda", model.spec), "auto")
    assert stage is None and why == ("model on CUDA, GPU decode off: torchvision cannot decode JPEG on the GPU "
                                     "(Not compiled with GPU support)")


def test_dispatch_picks_the_gpu_path_when_it_can_run(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_mod, "unavailable", lambda m: None)
    made: list[str] = []

    class Stage:
        def __init__(self, spec: Any, device: str) -> None:
            made.append(device)

        def describe(self) -> str:
            return "GPU (stub)"

    monkeypatch.setattr(gpu_mod, "GpuStage", Stage)
    stage, why = choose(_Model("cuda", model.spec), "auto")
    assert isinstance(stage, Stage) and made == ["cuda"] and why is None
    assert choose(_Model("cuda", model.spec), "auto", engine="ray")[0] is None
    with pytest.raises(GpuPathError, match="--engine local only"):
        choose(_Model("cuda", model.spec), "gpu", engine="ray")


def test_cli_decoder_gpu_without_a_gpu_is_one_line(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "a.jpg").write_bytes(_jpeg(64, 48, seed=1))
    code, out, err = run_cli([str(tmp_path), "--device", "cpu", "--decoder", "gpu", "--no-state"], capsys)
    assert code == 2 and out == ""
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "mai-scan: error: --decoder gpu: the GPU path cannot run here: the model runs on ONNX Runtime's "
        "CPU provider; use --decoder cpu or auto")
    code, out, err = run_cli([str(tmp_path), "--device", "cpu", "--decoder", "cpu", "--no-state", "--workers", "0"],
                             capsys)
    assert code == 0 and "decode: CPU, in this process (--decoder cpu)" in err


def test_predict_bound_reads_memory_in_place(model: Any) -> None:
    from mai.session import SessionError

    x = np.random.default_rng(0).integers(0, 256, (3, 200, 200, 3), dtype=np.uint8)
    ref = model.predict(x)
    got = model.predict_bound(x.ctypes.data, x.shape, "cpu")
    assert np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1])
    with pytest.raises(SessionError, match="needs the model on CUDA"):
        model.predict_bound(x.ctypes.data, x.shape, "cuda")
    with pytest.raises(SessionError, match="expected"):
        model.predict_bound(x.ctypes.data, (3, 200, 200), "cpu")


def test_cli_runs_the_gpu_stage_it_is_given(tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line around the GPU path: batch size, summary line, same records."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(5):
        (lib / f"p{i}.jpg").write_bytes(_jpeg(160, 120, seed=i))
    (lib / "q.png").write_bytes(encode(photo(100, 80, seed=5), "PNG"))
    made: list[GpuStage] = []

    def stand_in(model: Any, decoder: str, engine: str = "local") -> tuple[GpuStage, None]:
        made.append(GpuStage(model.spec, device="cpu"))
        return made[-1], None

    monkeypatch.setattr(gpu_mod, "choose", stand_in)
    code, out, err = run_cli([str(lib), "--device", "cpu", "--jsonl", str(tmp_path / "g.jsonl"), "--no-state",
                              "--workers", "1"], capsys)
    assert code == 0, err
    assert "decode: GPU (nvJPEG on cpu, resize on the device, exact; torch" in err
    assert "reader threads; other formats on the CPU, 1 worker process" in err
    assert "decode: 5 on the GPU (nvJPEG), 1 sent to the CPU decoder (PNG: 1)" in err
    monkeypatch.undo()
    code, _, err = run_cli([str(lib), "--device", "cpu", "--decoder", "cpu", "--no-draft", "--jsonl",
                            str(tmp_path / "c.jsonl"), "--no-state", "--workers", "1"], capsys)
    assert code == 0, err
    from support.scan import read_jsonl

    def key(p: Path) -> dict:
        return {r["path"]: r for r in read_jsonl(p)}

    assert key(tmp_path / "g.jsonl") == key(tmp_path / "c.jsonl")


@pytest.mark.parametrize("orientation", [1, 6])
def test_center_crop_and_other_filters_match_the_cpu_decoder(tmp_path: Path, orientation: int) -> None:
    from mai.preprocess import PreprocessSpec, Step
    from scanner.decode import decode_file

    spec = PreprocessSpec(steps=(Step((48, 32), "bicubic"), Step((64, 64), "lanczos")), fit="center_crop")
    p = tmp_path / "wide.jpg"
    p.write_bytes(_jpeg(301, 97, seed=3, orientation=orientation))
    ref = decode_file(str(p), spec, draft=False)
    (d,) = read_chunk([str(p)], spec)
    out = GpuStage(spec, device="cpu")._decode([d], [0])
    assert np.array_equal(out[0].numpy(), ref.array)


# -- on a real GPU (skipped elsewhere; benchmarks/gpu_check.sh runs them on a lent GPU) ----

def _cuda_model() -> Any:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from mai.session import SessionError, open_model

    try:
        return open_model("mai-cnn-cifake", "cuda")
    except SessionError as e:
        pytest.skip(f"ONNX Runtime cannot run on CUDA here: {e}")


def test_cuda_io_binding_reads_a_device_tensor() -> None:
    m = _cuda_model()
    x = np.random.default_rng(1).integers(0, 256, (64, 200, 200, 3), dtype=np.uint8)
    t = torch.from_numpy(x).cuda()
    torch.cuda.synchronize()
    got = m.predict_bound(t.data_ptr(), tuple(t.shape), "cuda", 0)
    ref = m.predict(x)
    assert np.array_equal(got[1], ref[1])


def test_cuda_gpu_path_agrees_with_the_cpu_path(tmp_path: Path) -> None:
    m = _cuda_model()
    from mai.session import open_model

    make_library(tmp_path)
    for o in range(1, 9):
        (tmp_path / f"orient{o}.jpg").write_bytes(_jpeg(1200, 800, seed=o, orientation=o))
    stage, why = choose(m, "gpu")
    assert stage is not None and why is None and "nvJPEG on NVIDIA" in stage.describe()
    got = _collect(tmp_path, m, options=EngineOptions(workers=2, gpu=stage, draft=False))
    cpu = _collect(tmp_path, open_model("mai-cnn-cifake", "cpu", 2), options=EngineOptions(workers=2, draft=False))
    assert got.keys() == cpu.keys()
    worst = 0.0
    for name, r in cpu.items():
        g = got[name]
        assert (g["error"] and g["error"]["kind"]) == (r["error"] and r["error"]["kind"]), name
        assert (g["width"], g["height"], g["format"]) == (r["width"], r["height"], r["format"]), name
        if r["error"] is None:
            worst = max(worst, abs(g["scores"]["cnn"] - r["scores"]["cnn"]))
    print(f"GPU vs CPU path: max |dp| {worst:.2e}; {stage.stats.lines()}")
    assert worst < 0.02  # nvJPEG's IDCT and the fp16 graph, against libjpeg and fp32
    assert stage.stats.gpu >= 10
    # The arrays themselves: nvJPEG + device resize against Pillow, one file.
    from scanner.decode import decode_file

    p = str(tmp_path / "orient6.jpg")
    (d,) = read_chunk([p], m.spec)
    out = stage._decode([d], [0])[0].cpu().numpy().astype(int)
    ref = decode_file(p, m.spec, draft=False).array.astype(int)
    assert np.abs(out - ref).max() <= 2


def test_oversized_and_odd_jpegs_go_to_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mai.preprocess import CIFAKE_SPEC
    from scanner import decode

    p = tmp_path / "motion.jpg"
    p.write_bytes(_jpeg(64, 48, seed=1) + b"\x00\x00\x00\x18ftypmp42" + bytes(4000))  # a video after the photo
    monkeypatch.setattr(decode, "GPU_MAX_BYTES", 2000)
    (d,) = read_chunk([str(p)], CIFAKE_SPEC)
    assert d.cpu == "JPEG file over 0 MB" and d.jpeg is None and d.error is None
    monkeypatch.setattr(decode, "GPU_MAX_BYTES", 1 << 30)
    (d,) = read_chunk([str(p)], CIFAKE_SPEC)
    assert d.cpu == "JPEG without an end marker"  # the bytes after the image: Pillow decides
