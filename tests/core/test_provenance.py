"""mai.provenance: every signal from fixtures made here with Pillow and numpy (no network, no
files but the tests' own)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from mai.provenance import read_provenance

A1111 = (
    "a cat on a sofa, best quality\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)
FORGE = A1111.replace("Version: v1.10.1", "Version: f2.0.1v1.10.1-previous-313-g8a042934")
DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"
KEYS = {"signal", "where", "generator", "ai"}


# ----------------------------------------------------------------------------- fixture makers

def _read(path: Path) -> list[dict]:
    with Image.open(path) as im:
        loads: list[int] = []
        load = im.load

        def counted():  # type: ignore[no-untyped-def]
            loads.append(1)
            return load()

        im.load = counted  # type: ignore[method-assign]
        signals = read_provenance(im, path)
        # Only stealth PNG info looks at pixels, and only in PNG and WebP.
        assert not loads or im.format in ("PNG", "WEBP"), "pixels decoded"
    json.dumps(signals)  # JSON-serialisable, always
    assert all(set(s) == KEYS | ({"url"} if s["signal"] == "c2pa:remote" else set()) for s in signals)
    return signals


def _png(tmp_path: Path, text: dict[str, str] | None = None, itxt: dict[str, str] | None = None,
         name: str = "a.png", **save) -> Path:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    for k, v in (itxt or {}).items():
        info.add_itxt(k, v)
    path = tmp_path / name
    Image.new("RGB", (16, 16), (90, 120, 150)).save(path, "PNG", pnginfo=info, **save)
    return path


def _jpeg(tmp_path: Path, name: str = "a.jpg", **save) -> Path:
    path = tmp_path / name
    Image.new("RGB", (16, 16), (90, 120, 150)).save(path, "JPEG", **save)
    return path


def _exif(ifd0: dict[int, object] | None = None, user_comment: bytes | None = None, endian: str = ">") -> bytes:
    exif = Image.Exif()
    exif.endian = endian  # type: ignore[attr-defined]
    for tag, value in (ifd0 or {}).items():
        exif[tag] = value
    if user_comment is not None:
        exif.get_ifd(0x8769)[0x9286] = user_comment
    return exif.tobytes()


def _xmp(dst: str, form: str = "attribute", tool: str | None = None) -> bytes:
    tool_attr = f' xmp:CreatorTool="{tool}"' if tool else ""
    if form == "attribute":
        body = f'<rdf:Description rdf:about=""{tool_attr} Iptc4xmpExt:DigitalSourceType="{DST}{dst}"/>'
    elif form == "element":
        body = (f'<rdf:Description rdf:about=""{tool_attr}>\n  <Iptc4xmpExt:DigitalSourceType>{DST}{dst}'
                "</Iptc4xmpExt:DigitalSourceType>\n</rdf:Description>")
    else:  # resource
        body = (f'<rdf:Description{tool_attr}><Iptc4xmpExt:DigitalSourceType rdf:resource="{DST}{dst}"/>'
                "</rdf:Description>")
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
        f"{body}</rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>"
    ).encode()


def _insert_jpeg_segment(path: Path, marker: int, payload: bytes) -> None:
    data = path.read_bytes()
    segment = struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload
    path.write_bytes(data[:2] + segment + data[2:])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _insert_png_chunk(path: Path, kind: bytes, data: bytes) -> None:
    raw = path.read_bytes()
    at = 8 + 8 + 13 + 4  # right after IHDR
    path.write_bytes(raw[:at] + _png_chunk(kind, data) + raw[at:])


JUMBF = b"JP\x00\x01\x00\x00\x00\x01\x00\x00\x00\x20jumb\x00\x00\x00\x18jumdc2pa\x00\x11\x00\x10\x80\x00c2pa\x00"


# ----------------------------------------------------------------------------- PNG text chunks

def test_png_a1111_parameters(tmp_path: Path) -> None:
    assert _read(_png(tmp_path, {"parameters": A1111})) == [
        {"signal": "png:parameters", "where": "PNG tEXt", "generator": "AUTOMATIC1111", "ai": True}
    ]


def test_png_forge_parameters_and_itxt(tmp_path: Path) -> None:
    assert _read(_png(tmp_path, itxt={"parameters": FORGE})) == [
        {"signal": "png:parameters", "where": "PNG iTXt", "generator": "Forge", "ai": True}
    ]


def test_png_comfyui(tmp_path: Path) -> None:
    prompt = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}}})
    workflow = json.dumps({"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}]})
    signals = _read(_png(tmp_path, {"prompt": prompt, "workflow": workflow}))
    assert {(s["signal"], s["generator"], s["ai"]) for s in signals} == {
        ("png:prompt", "ComfyUI", True), ("png:workflow", "ComfyUI", True)
    }


@pytest.mark.parametrize("key", ["invokeai_metadata", "sd-metadata", "Dream"])
def test_png_invokeai(tmp_path: Path, key: str) -> None:
    value = '"a castle" -s 50 -S 42 -W 512 -H 512' if key == "Dream" else json.dumps({"model": "sd-1.5", "steps": 30})
    assert _read(_png(tmp_path, {key: value})) == [
        {"signal": f"png:{key}", "where": "PNG tEXt", "generator": "InvokeAI", "ai": True}
    ]


def test_png_novelai(tmp_path: Path) -> None:
    comment = json.dumps({"prompt": "1girl", "steps": 28, "sampler": "k_euler_ancestral", "uc": "lowres"})
    signals = _read(_png(tmp_path, {"Software": "NovelAI", "Comment": comment, "Description": "1girl"}))
    assert {(s["signal"], s["generator"], s["ai"]) for s in signals} == {
        ("png:Software", "NovelAI", True), ("png:Comment", "NovelAI", True)
    }


def test_png_fooocus(tmp_path: Path) -> None:
    params = json.dumps({"prompt": "a cat", "steps": 30, "version": "Fooocus v2.5.5"})
    signals = _read(_png(tmp_path, {"parameters": params, "fooocus_scheme": "fooocus"}))
    assert {(s["signal"], s["generator"], s["ai"]) for s in signals} == {
        ("png:parameters", "Fooocus", True), ("png:fooocus_scheme", "Fooocus", True)
    }


def test_png_ordinary_text_gives_nothing(tmp_path: Path) -> None:
    text = {"Software": "GIMP 2.10", "Title": "Holiday", "Description": "Our cat", "Comment": "nice light"}
    assert _read(_png(tmp_path, text)) == []


# ----------------------------------------------------------------------------- EXIF

@pytest.mark.parametrize(
    "comment",
    [
        b"UNICODE\0" + A1111.encode("utf-16-be"),  # what A1111 (piexif) writes
        b"UNICODE\0" + A1111.encode("utf-16-le"),
        b"ASCII\0\0\0" + A1111.encode("ascii"),
    ],
    ids=["utf16-be", "utf16-le", "ascii"],
)
@pytest.mark.parametrize("endian", ["<", ">"])
def test_jpeg_user_comment_a1111(tmp_path: Path, comment: bytes, endian: str) -> None:
    path = _jpeg(tmp_path, exif=_exif(user_comment=comment, endian=endian))
    assert _read(path) == [{"signal": "exif:UserComment", "where": "EXIF", "generator": "AUTOMATIC1111", "ai": True}]


def test_webp_user_comment_forge(tmp_path: Path) -> None:
    path = tmp_path / "a.webp"
    Image.new("RGB", (16, 16)).save(path, "WEBP", exif=_exif(user_comment=b"UNICODE\0" + FORGE.encode("utf-16-be")))
    assert _read(path) == [{"signal": "exif:UserComment", "where": "EXIF", "generator": "Forge", "ai": True}]


@pytest.mark.parametrize(
    ("tag", "name", "value", "generator"),
    [
        (0x0131, "Software", "NovelAI", "NovelAI"),
        (0x0131, "Software", "Midjourney v6", "Midjourney"),
        (0x010E, "ImageDescription", "Made with DALL\u00b7E by OpenAI", "DALL-E/OpenAI"),
        (0x013B, "Artist", "OpenAI", "DALL-E/OpenAI"),
    ],
)
def test_jpeg_exif_ai_tool(tmp_path: Path, tag: int, name: str, value: str, generator: str) -> None:
    path = _jpeg(tmp_path, exif=_exif({tag: value}))
    assert _read(path) == [{"signal": f"exif:{name}", "where": "EXIF", "generator": generator, "ai": True}]


def test_png_exif_chunk(tmp_path: Path) -> None:
    path = _png(tmp_path, exif=_exif({0x0131: "ComfyUI"}))
    assert _read(path) == [{"signal": "exif:Software", "where": "EXIF", "generator": "ComfyUI", "ai": True}]


def test_camera_photo_gives_nothing(tmp_path: Path) -> None:
    exif = _exif({0x010F: "Canon", 0x0110: "Canon EOS R5", 0x0131: "GIMP 2.10", 0x010E: "Sunset over Lisbon"},
                 user_comment=b"ASCII\0\0\0Shot handheld")
    assert _read(_jpeg(tmp_path, exif=exif)) == []
    assert _read(_jpeg(tmp_path, "b.jpg", exif=_exif({0x0131: "Adobe Photoshop 25.0 (Windows)"}))) == []


# ----------------------------------------------------------------------------- XMP and IPTC

@pytest.mark.parametrize("form", ["attribute", "element", "resource"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_xmp_trained_algorithmic_media(tmp_path: Path, form: str, fmt: str) -> None:
    xmp = _xmp("trainedAlgorithmicMedia", form)
    if fmt == "JPEG":
        path = _jpeg(tmp_path, xmp=xmp)
    else:  # the iTXt key every XMP-aware PNG writer uses
        path = _png(tmp_path, itxt={"XML:com.adobe.xmp": xmp.decode()})
    assert _read(path) == [{"signal": "xmp:DigitalSourceType", "where": "XMP", "generator": None, "ai": True}]


def test_xmp_composite_with_creator_tool(tmp_path: Path) -> None:
    path = _jpeg(tmp_path, xmp=_xmp("compositeWithTrainedAlgorithmicMedia", tool="Adobe Photoshop 25.0"))
    assert _read(path) == [
        {"signal": "xmp:DigitalSourceType", "where": "XMP", "generator": "Adobe Photoshop 25.0", "ai": True}
    ]


@pytest.mark.parametrize("form", ["attribute", "element"])
def test_xmp_digital_capture_gives_nothing(tmp_path: Path, form: str) -> None:
    assert _read(_jpeg(tmp_path, xmp=_xmp("digitalCapture", form))) == []
    assert _read(_png(tmp_path, itxt={"XML:com.adobe.xmp": _xmp("digitalCapture", form).decode()})) == []


def test_iptc_iim_source_type(tmp_path: Path) -> None:
    uri = (DST + "trainedAlgorithmicMedia").encode()
    iim = b"\x1c\x02\x00\x00\x02\x00\x04" + b"\x1c\x02\x73" + struct.pack(">H", len(uri)) + uri
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\0\0" + struct.pack(">I", len(iim)) + iim
    resource += b"\0" * (len(iim) & 1)
    path = _jpeg(tmp_path)
    _insert_jpeg_segment(path, 0xED, b"Photoshop 3.0\0" + resource)
    assert _read(path) == [{"signal": "iptc:DigitalSourceType", "where": "IPTC-IIM", "generator": None, "ai": True}]


def test_jpeg_comment_with_parameters(tmp_path: Path) -> None:
    path = _jpeg(tmp_path, comment=A1111.encode())
    assert _read(path) == [
        {"signal": "jpeg:comment", "where": "JPEG comment", "generator": "AUTOMATIC1111", "ai": True}
    ]


# ----------------------------------------------------------------------------- bad input never raises

@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_junk_png_chunks_and_corrupt_exif(tmp_path: Path) -> None:
    junk = bytes(range(256)).decode("latin-1") * 8
    path = _png(tmp_path, {"Software": junk, "Comment": junk, "Description": junk, "XML:com.adobe.xmp": junk})
    _insert_png_chunk(path, b"eXIf", b"MM\0*\0\0\0\x08\xff\xff" + b"\x01" * 40)
    assert read_provenance(Image.open(path), path) == []
    # A generator key is still a claim, whatever its value.
    path = _png(tmp_path, {"parameters": junk}, name="b.png")
    assert [s["signal"] for s in _read(path)] == ["png:parameters"]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\0\0" + b"\xde\xad\xbe\xef" * 20,
        b"Exif\0\0II*\0\x08\0\0\0\xff\xff",  # absurd entry count, truncated
        b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x87\x69\0\x04\0\0\0\x01\x7f\xff\xff\xff",  # Exif IFD far past the end
        b"Exif\0\0",
    ],
)
def test_corrupt_jpeg_exif(tmp_path: Path, exif: bytes) -> None:
    path = _jpeg(tmp_path)
    _insert_jpeg_segment(path, 0xE1, exif)
    assert _read(path) == []


def test_hostile_values_in_info() -> None:
    im = Image.new("RGB", (4, 4))
    im.format = "PNG"  # type: ignore[misc]
    im.info.update({"parameters": "x" * 5_000_000, "exif": b"\0" * 10, "xmp": 12, "Comment": None, 7: "seven"})
    assert [s["signal"] for s in read_provenance(im)] == ["png:parameters"]
    im.format = "JPEG"  # type: ignore[misc]
    im.info = {"xmp": b"igitalSourceType=" * 100_000, "photoshop": "nonsense", "comment": object()}
    assert read_provenance(im, "/nonexistent/file.jpg") == []


def test_long_user_comment(tmp_path: Path) -> None:
    # Near the 64 KiB JPEG segment limit, parameters after a long prompt are still found.
    comment = b"UNICODE\0" + ("y" * 30_000 + " " + A1111).encode("utf-16-be")
    path = _jpeg(tmp_path, exif=_exif(user_comment=comment))
    assert [s["signal"] for s in _read(path)] == ["exif:UserComment"]


# ----------------------------------------------------------------------------- C2PA

def _c2pa_jpeg(tmp_path: Path) -> Path:
    path = _jpeg(tmp_path, name="c2pa.jpg")
    _insert_jpeg_segment(path, 0xEB, JUMBF)
    return path


def _manifest_store(source_type: str | None) -> dict:
    actions = [{"action": "c2pa.created", "softwareAgent": {"name": "Adobe Firefly", "version": "3"}}]
    if source_type:
        actions[0]["digitalSourceType"] = DST + source_type
    return {
        "active_manifest": "urn:uuid:1",
        "manifests": {
            "urn:uuid:1": {
                "claim_generator_info": [{"name": "Example Signer", "version": "1.0"}],
                "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}}],
            }
        },
    }


def _fake_c2pa(monkeypatch: pytest.MonkeyPatch, store: dict | Exception | None) -> list[str]:
    calls: list[str] = []

    class Reader:
        def __init__(self, store: dict) -> None:
            self.store = store

        @classmethod
        def try_create(cls, path: str) -> Reader | None:
            calls.append(path)
            if isinstance(store, Exception):
                raise store
            return None if store is None else cls(store)

        def json(self) -> str:
            return json.dumps(self.store)

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "c2pa", types.SimpleNamespace(Reader=Reader))
    return calls


def test_c2pa_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "c2pa", None)  # makes `import c2pa` raise ImportError
    assert _read(_c2pa_jpeg(tmp_path)) == []


def test_c2pa_ai_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_c2pa(monkeypatch, _manifest_store("trainedAlgorithmicMedia"))
    path = _c2pa_jpeg(tmp_path)
    assert _read(path) == [{"signal": "c2pa:manifest", "where": "C2PA manifest", "generator": "Firefly", "ai": True}]
    assert calls == [str(path)]


def test_c2pa_manifest_without_ai(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_c2pa(monkeypatch, _manifest_store(None))
    assert _read(_c2pa_jpeg(tmp_path)) == [
        {"signal": "c2pa:manifest", "where": "C2PA manifest", "generator": "Example Signer 1.0", "ai": False}
    ]


def test_c2pa_png_and_webp_markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_c2pa(monkeypatch, _manifest_store("compositeWithTrainedAlgorithmicMedia"))
    png = _png(tmp_path)
    _insert_png_chunk(png, b"caBX", JUMBF[8:])
    webp = tmp_path / "a.webp"
    Image.new("RGB", (16, 16)).save(webp, "WEBP", xmp=b"<x/>")  # extended (VP8X) form, which allows more chunks
    raw = webp.read_bytes() + b"C2PA" + struct.pack("<I", len(JUMBF)) + JUMBF + b"\0" * (len(JUMBF) & 1)
    webp.write_bytes(raw[:4] + struct.pack("<I", len(raw) - 8) + raw[8:])
    for path in (png, webp):
        assert [(s["signal"], s["ai"]) for s in _read(path)] == [("c2pa:manifest", True)]


def test_c2pa_reader_only_runs_on_marked_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_c2pa(monkeypatch, _manifest_store("trainedAlgorithmicMedia"))
    assert _read(_jpeg(tmp_path)) == []
    assert _read(_png(tmp_path)) == []
    assert calls == []


@pytest.mark.parametrize("outcome", [None, RuntimeError("ManifestNotFound"), {"manifests": "garbage"}])
def test_c2pa_reader_failures_are_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: object) -> None:
    _fake_c2pa(monkeypatch, outcome)  # type: ignore[arg-type]
    assert _read(_c2pa_jpeg(tmp_path)) == []


def test_bytesio_image_without_path() -> None:
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    buf.seek(0)
    assert [s["signal"] for s in read_provenance(Image.open(buf))] == ["png:parameters"]


def test_module_is_torch_free() -> None:
    import subprocess

    code = "import sys, mai.provenance; sys.exit('torch' in sys.modules or 'numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------- stealth PNG info

NOVELAI = json.dumps({
    "Title": "AI generated image", "Description": "1girl, best quality", "Software": "NovelAI",
    "Source": "Stable Diffusion XL C1E1DE52",
    "Comment": json.dumps({"prompt": "1girl, best quality", "steps": 28, "sampler": "k_euler_ancestral",
                           "uc": "lowres", "seed": 1}),
})


def _stealth_bits(signature: str, payload: bytes, length: int | None = None) -> np.ndarray:
    """What sd-webui-stealth-pnginfo writes: the signature, the payload's length in bits, the payload."""
    nbits = 8 * len(payload) if length is None else length
    return np.unpackbits(np.frombuffer(signature.encode() + struct.pack(">I", nbits) + payload, np.uint8))


def _embed(pixels: np.ndarray, bits: np.ndarray, bands: list[int]) -> np.ndarray:
    """Write `bits` into the LSBs of `bands`, column by column (x, then y), as the extension does."""
    h, w, _ = pixels.shape
    stream = pixels[:, :, bands].transpose(1, 0, 2).reshape(-1)
    assert len(bits) <= len(stream), "the test image is too small for its payload"
    stream[: len(bits)] = (stream[: len(bits)] & 0xFE) | bits
    pixels[:, :, bands] = stream.reshape(w, h, len(bands)).transpose(1, 0, 2)
    return pixels


def _stealth_image(signature: str, text: str | bytes, size: tuple[int, int] = (96, 128), mode: str = "RGBA",
                   length: int | None = None) -> Image.Image:
    payload = text.encode() if isinstance(text, str) else text
    if signature.endswith("comp") and isinstance(text, str):
        payload = gzip.compress(payload)
    rng = np.random.default_rng(1)
    w, h = size
    pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    pixels[:, :, 3] = 255  # the extension makes the image opaque first
    alpha = "png" in signature
    _embed(pixels, _stealth_bits(signature, payload, length), [3] if alpha else [0, 1, 2])
    return Image.fromarray(pixels, "RGBA").convert(mode)


def _save(im: Image.Image, path: Path, fmt: str = "PNG", **save) -> Path:
    im.save(path, fmt, **save)
    return path


@pytest.mark.parametrize(
    "signature, text, generator",
    [
        ("stealth_pnginfo", A1111, "AUTOMATIC1111"),
        ("stealth_pngcomp", FORGE, "Forge"),
        ("stealth_pngcomp", NOVELAI, "NovelAI"),
        ("stealth_pnginfo", NOVELAI, "NovelAI"),
        ("stealth_pngcomp", "x" * 200_000 + " " + A1111, None),  # over the 64 KiB cap: read, the rest unread
    ],
)
def test_stealth_alpha(tmp_path: Path, signature: str, text: str, generator: str | None) -> None:
    size = (600, 400) if len(text) > 100_000 else (96, 128)
    path = _save(_stealth_image(signature, text, size), tmp_path / "s.png")
    assert _read(path) == [{"signal": f"png:{signature}", "where": "PNG alpha LSB", "generator": generator,
                            "ai": True}]


@pytest.mark.parametrize("signature", ["stealth_rgbinfo", "stealth_rgbcomp"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_stealth_rgb(tmp_path: Path, signature: str, mode: str) -> None:
    path = _save(_stealth_image(signature, A1111, mode=mode), tmp_path / "s.png")
    assert _read(path) == [{"signal": f"png:{signature}", "where": "PNG RGB LSB", "generator": "AUTOMATIC1111",
                            "ai": True}]


def test_stealth_lossless_webp(tmp_path: Path) -> None:
    im = _stealth_image("stealth_pngcomp", NOVELAI)
    path = _save(im, tmp_path / "s.webp", "WEBP", lossless=True, exact=True)
    assert _read(path) == [{"signal": "webp:stealth_pngcomp", "where": "WEBP alpha LSB", "generator": "NovelAI",
                            "ai": True}]
    rgb = _save(_stealth_image("stealth_rgbinfo", A1111, mode="RGB"), tmp_path / "r.webp", "WEBP", lossless=True)
    assert [s["signal"] for s in _read(rgb)] == ["webp:stealth_rgbinfo"]


def test_stealth_la_and_short_wide_image(tmp_path: Path) -> None:
    # LA keeps the alpha channel; a 7-pixel-tall image spreads the signature over 18 columns.
    pixels = np.full((7, 400, 2), 200, np.uint8)
    pixels[:, :, 1] = 255
    _embed(pixels, _stealth_bits("stealth_pnginfo", A1111.encode()), [1])
    path = _save(Image.fromarray(pixels, "LA"), tmp_path / "la.png")
    assert [(s["signal"], s["generator"]) for s in _read(path)] == [("png:stealth_pnginfo", "AUTOMATIC1111")]


@pytest.mark.parametrize("height", [1, 7, 39, 40, 41, 50, 51, 119, 120, 121, 151, 152, 153, 2100])
@pytest.mark.parametrize("signature", ["stealth_pnginfo", "stealth_rgbinfo"])
def test_stealth_any_height(height: int, signature: str) -> None:
    # Column boundaries anywhere in the signature, the length or the payload.
    im = _stealth_image(signature, A1111, (-(-2100 // height) + 1, height))
    im.format = "PNG"  # type: ignore[misc]
    assert [s["signal"] for s in read_provenance(im)] == [f"png:{signature}"]


def test_stealth_survives_stripped_text(tmp_path: Path) -> None:
    im = _stealth_image("stealth_pnginfo", A1111)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    both = _save(im, tmp_path / "both.png", pnginfo=info)
    assert [s["signal"] for s in _read(both)] == ["png:parameters", "png:stealth_pnginfo"]
    with Image.open(both) as opened:  # what a text-stripping re-save does: Pillow writes no text chunks
        stripped = _save(opened, tmp_path / "stripped.png")
    assert [s["signal"] for s in _read(stripped)] == ["png:stealth_pnginfo"]


@pytest.mark.parametrize(
    "signature, payload, length",
    [
        ("stealth_pnginfo", bytes(np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8)), None),  # garbage
        ("stealth_pnginfo", b"Steps: 20\x00\x01\x02binary", None),  # control characters: not text
        ("stealth_pngcomp", b"\x1f\x8b\x08\x00 not really gzip at all", None),
        ("stealth_pngcomp", gzip.compress(A1111.encode())[:60], None),  # a cut gzip stream
        ("stealth_pnginfo", A1111.encode(), 10_000_000),  # a length past the image: truncated
        ("stealth_pnginfo", A1111.encode(), 0xFFFFFFFF),
        ("stealth_pnginfo", A1111.encode(), 0),
        ("stealth_pnginfx", A1111.encode(), None),  # not the signature
        ("stealth_rgbinfo", A1111.encode(), None),  # the RGB signature, but written in alpha
        ("stealth_pnginfo", b"   \n  ", None),  # no text
    ],
)
def test_stealth_garbage_is_ignored(tmp_path: Path, signature: str, payload: bytes, length: int | None) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (128, 96, 4), dtype=np.uint8)
    pixels[:, :, 3] = 255
    _embed(pixels, _stealth_bits(signature, payload, length), [3])
    assert _read(_save(Image.fromarray(pixels, "RGBA"), tmp_path / "g.png")) == []


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (1, 119), (4, 13)])
@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "P", "L", "I;16", "1"])
def test_stealth_tiny_images_and_every_mode(tmp_path: Path, size: tuple[int, int], mode: str) -> None:
    # Fewer pixels than a signature (and its length) need: nothing, no exception.
    im = Image.new("RGBA", size, (10, 20, 30, 255)).convert(mode)
    assert _read(_save(im, tmp_path / "t.png")) == []


def test_stealth_in_a_pa_image() -> None:
    # PA (palette + alpha): Pillow cannot write it, but a decoder may hand one over.
    rgba = _stealth_image("stealth_pnginfo", A1111)
    im = Image.merge("PA", (rgba.convert("L").getchannel("L"), rgba.getchannel("A")))
    im.format = "PNG"  # type: ignore[misc]
    assert [s["signal"] for s in read_provenance(im)] == ["png:stealth_pnginfo"]


def test_stealth_not_in_lossy_formats(tmp_path: Path) -> None:
    im = _stealth_image("stealth_rgbinfo", A1111, mode="RGB")
    assert _read(_save(im, tmp_path / "s.jpg", "JPEG", quality=100)) == []  # _read: no pixel decoded
    assert _read(_save(_stealth_image("stealth_pnginfo", A1111), tmp_path / "s.tif", "TIFF")) == []


def test_stealth_reads_one_column_without_a_signature(tmp_path: Path) -> None:
    path = _save(Image.new("RGBA", (300, 200), (1, 2, 3, 255)), tmp_path / "plain.png")
    boxes: list[tuple[int, ...]] = []
    with Image.open(path) as im:
        im.load()
        crop = im.crop

        def recorded(box=None):  # type: ignore[no-untyped-def]
            boxes.append(tuple(box))
            return crop(box)

        im.crop = recorded  # type: ignore[method-assign]
        assert read_provenance(im, path) == []
    assert boxes and all(box[2] - box[0] <= 1 for box in boxes), boxes


@pytest.mark.parametrize("length", [0xFFFFFFFF, 200 * 200 - 152 + 1])
def test_stealth_length_past_the_image_reads_no_further(tmp_path: Path, length: int) -> None:
    im = _stealth_image("stealth_pnginfo", A1111, (200, 200), length=length)
    im.format = "PNG"  # type: ignore[misc]
    boxes: list[tuple[int, ...]] = []
    crop = im.crop
    im.crop = lambda box=None: boxes.append(tuple(box)) or crop(box)  # type: ignore[method-assign]
    assert read_provenance(im) == []
    assert boxes and all(box[2] <= 1 for box in boxes), boxes  # the signature and length, in column 0


def test_stealth_on_a_broken_png(tmp_path: Path) -> None:
    path = _save(_stealth_image("stealth_pnginfo", A1111), tmp_path / "s.png")
    path.write_bytes(path.read_bytes()[:300])  # the pixel data cut short: the decode fails, quietly
    with Image.open(path) as im:
        assert read_provenance(im, path) == []


def test_stealth_through_the_scanner_decode(tmp_path: Path) -> None:
    from mai.preprocess import CIFAKE_SPEC
    from scanner.decode import configure_pillow, decode_file

    configure_pillow()
    path = _save(_stealth_image("stealth_pngcomp", NOVELAI, (300, 240)), tmp_path / "nai.png")
    d = decode_file(str(path), CIFAKE_SPEC)
    assert d.error is None and d.array is not None
    assert d.facts["provenance"] == [{"signal": "png:stealth_pngcomp", "where": "PNG alpha LSB",
                                      "generator": "NovelAI", "ai": True}]


# ----------------------------------------------------------------------------- remote C2PA manifests

URL = "https://cai-manifests.example.com/manifests/urn-uuid-1234.c2pa"


def _provenance_xmp(url: str, form: str = "attribute") -> bytes:
    if form == "attribute":
        body = f'<rdf:Description rdf:about="" dcterms:provenance="{url}"/>'
    elif form == "element":
        body = f'<rdf:Description rdf:about="">\n <dcterms:provenance>{url}</dcterms:provenance>\n</rdf:Description>'
    else:
        body = f'<rdf:Description rdf:about=""><dcterms:provenance rdf:resource="{url}"/></rdf:Description>'
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:dcterms="http://purl.org/dc/terms/">'
        f"{body}</rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>"
    ).encode()


def _remote(url: str = URL) -> dict:
    return {"signal": "c2pa:remote", "where": "XMP dcterms:provenance", "generator": None, "ai": False, "url": url}


@pytest.mark.parametrize("form", ["attribute", "element", "resource"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_remote_manifest_reference(tmp_path: Path, form: str, fmt: str) -> None:
    xmp = _provenance_xmp(URL, form)
    path = _jpeg(tmp_path, xmp=xmp) if fmt == "JPEG" else _png(tmp_path, itxt={"XML:com.adobe.xmp": xmp.decode()})
    assert _read(path) == [_remote()]


def test_remote_manifest_url_is_unescaped_sanitised_and_capped(tmp_path: Path) -> None:
    path = _jpeg(tmp_path, xmp=_provenance_xmp("https://example.com/m.c2pa?a=1&amp;b=2"))
    assert _read(path) == [_remote("https://example.com/m.c2pa?a=1&b=2")]
    hostile = "https://example.com/\x1b[31mred&#x7;\u202e" + "a" * 5000
    path = _jpeg(tmp_path, name="h.jpg", xmp=_provenance_xmp(hostile, "element"))
    [sig] = _read(path)
    assert sig["url"].startswith("https://example.com/[31mred") and len(sig["url"]) == 2048
    assert all(c.isprintable() for c in sig["url"])


@pytest.mark.parametrize("value", ["self#jumbf=/c2pa/urn:uuid:1234", "javascript:alert(1)", "", "https://",
                                   "file:///etc/passwd", "ftp://example.com/m.c2pa"])
def test_remote_manifest_needs_an_http_url(tmp_path: Path, value: str) -> None:
    assert _read(_jpeg(tmp_path, xmp=_provenance_xmp(value))) == []


def test_remote_manifest_with_an_embedded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An embedded manifest store is what counts: c2pa-python reads it, or without it no claim is made.
    path = _jpeg(tmp_path, xmp=_provenance_xmp(URL))
    _insert_jpeg_segment(path, 0xEB, JUMBF)
    monkeypatch.setitem(sys.modules, "c2pa", None)
    assert _read(path) == []
    _fake_c2pa(monkeypatch, _manifest_store("trainedAlgorithmicMedia"))
    assert [s["signal"] for s in _read(path)] == ["c2pa:manifest"]


def test_remote_manifest_is_never_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_c2pa(monkeypatch, _manifest_store("trainedAlgorithmicMedia"))  # c2pa-rs would fetch the URL
    import socket

    monkeypatch.setattr(socket, "socket", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    assert _read(_jpeg(tmp_path, xmp=_provenance_xmp(URL))) == [_remote()]
    assert calls == []


def test_remote_manifest_beside_an_ai_source_type(tmp_path: Path) -> None:
    xmp = _xmp("trainedAlgorithmicMedia").replace(b'Iptc4xmpExt:DigitalSourceType=',
                                                  f'dcterms:provenance="{URL}" Iptc4xmpExt:DigitalSourceType='.encode())
    assert [(s["signal"], s["ai"]) for s in _read(_jpeg(tmp_path, xmp=xmp))] == [
        ("xmp:DigitalSourceType", True), ("c2pa:remote", False)]


def test_remote_manifest_leaves_the_verdict_to_the_cnn() -> None:
    from scanner.records import Decision, make_record

    facts = {"scores": {"cnn": 0.2, "vlm": None}, "provenance": [_remote()], "width": 4, "height": 4,
             "format": "JPEG", "bytes": 10}
    r = make_record("a.jpg", model="m@1", facts=facts, decision=Decision(0.5))
    assert (r["verdict"], r["stage"], r["provenance"]) == ("authentic", "cnn", [_remote()])


def test_mai_scan_reports_stealth_and_remote(tmp_path: Path, model_args: list[str], capsys) -> None:
    from support.scan import run_cli

    _save(_stealth_image("stealth_pnginfo", A1111), tmp_path / "stealth.png")
    _jpeg(tmp_path, name="remote.jpg", xmp=_provenance_xmp(URL))
    code, out, err = run_cli([str(tmp_path), "--jsonl", "-", "-q", "--no-state", *model_args], capsys)
    assert code == 0, err
    recs = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert (recs["stealth.png"]["verdict"], recs["stealth.png"]["stage"]) == ("synthetic", "metadata")
    assert recs["stealth.png"]["provenance"][0]["signal"] == "png:stealth_pnginfo"
    assert recs["remote.jpg"]["stage"] == "cnn" and recs["remote.jpg"]["provenance"] == [_remote()]

