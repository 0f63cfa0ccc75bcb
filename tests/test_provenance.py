"""mai.provenance: every signal from fixtures made here with Pillow (no network, no files)."""

from __future__ import annotations

import io
import json
import struct
import sys
import types
import zlib
from pathlib import Path

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
        im.load = lambda: (_ for _ in ()).throw(AssertionError("pixels decoded"))  # type: ignore[method-assign]
        signals = read_provenance(im, path)
    json.dumps(signals)  # JSON-serialisable, always
    assert all(set(s) == KEYS for s in signals)
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
