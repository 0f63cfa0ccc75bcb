"""The HTML report (`mai-scan --html`, `mai report`): what the page holds
(records, thumbnails, summary), that nothing from a file can become markup,
the paths it shows, and, in headless Chromium where one is installed, that the
page counts, filters and draws what it holds."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.scan import a1111_png, encode, make_library, photo, read_jsonl, run_cli, tiny_pngs

from scanner import report
from scanner.records import Decision, error_record, make_record
from scanner.report import PathLabels, ReportWriter, common_root, make_thumbnail, report_from_jsonl

PWN = "document.body.setAttribute('data-pwned','1')"
EVIL_NAME = f"<script>{PWN}</script>.png"  # on disk: a folder '<script>...<' holding 'script>.png'
EVIL_META = f"</script><img src=x onerror=\"{PWN}\"><!--"


def page_data(html: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary and the records a report holds (as its script reads them)."""
    s = re.search(r'<script type="application/json" id="mai-summary">(.*?)</script>', html, re.S)
    d = re.search(r'<script type="application/json" id="mai-data">(.*?)</script>', html, re.S)
    assert s and d
    return json.loads(s.group(1)), json.loads(d.group(1))


def record(path: str, p: float = 0.9, prov: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    facts = {"scores": {"cnn": p, "vlm": None}, "provenance": prov or [], "width": 64, "height": 48,
             "format": "PNG", "bytes": 100}
    return make_record(path, model="t@00000000", facts=facts, decision=Decision.make(0.5, (0.4, 0.6)))


def hostile_records(root: str) -> list[dict[str, Any]]:
    """Markup in every string a record carries: the path, metadata, an error message."""
    evil_sig = {"signal": "png:Comment", "where": EVIL_META, "generator": EVIL_META, "ai": True,
                "url": "javascript:" + PWN}
    return [record(f"{root}/{EVIL_NAME}", 0.9), record(f"{root}/meta.png", 0.2, [evil_sig]),
            {**error_record(f"{root}/{EVIL_META}.jpg", "decode", EVIL_META, model="t@00000000"),
             "format": EVIL_META}]


# ---------------------------------------------------------------------------- the file

def test_nothing_from_a_record_is_markup(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    w = ReportWriter(str(target), roots=[str(tmp_path / "lib")], thumbs="none")
    recs = hostile_records(str(tmp_path / "lib"))
    for r in recs:
        w.write(r)
    w.close()
    html = target.read_text(encoding="ascii")
    # The data cannot end its element or open a comment: only the page's own three scripts close.
    assert html.count("</script>") == 3 and "<img src=x" not in html and "<!--" not in html
    assert "<script>document" not in html and "\\u003cscript\\u003e" in html
    _, data = page_data(html)
    assert [d["r"]["path"] for d in data] == [f"lib/{EVIL_NAME}", "lib/meta.png", f"lib/{EVIL_META}.jpg"]
    assert data[1]["r"]["provenance"][0]["generator"] == EVIL_META  # kept whole, shown as text
    # The page's script and style are the only ones the Content Security Policy allows, and no network.
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp and csp.count("'sha256-") == 2
    assert not re.search(r'(src|href)="https?:', html)


def test_paths_shown_relative_to_the_scanned_roots() -> None:
    labels = PathLabels(["/home/alice/photos", "./shots/", "one.jpg", "/home/alice/photos/deep"])
    assert labels("/home/alice/photos/a/b.jpg") == "photos/a/b.jpg"
    assert labels("/home/alice/photos/deep/c.jpg") == "deep/c.jpg"  # the innermost root names its files
    assert labels("./shots/x.png") == "shots/x.png"
    assert labels("one.jpg") == "one.jpg"
    assert labels("/elsewhere/secret/z.jpg") == "z.jpg"  # under no root: the name only
    assert labels("/home/alice/photosX/q.jpg") == "q.jpg"
    msg = labels.redact("cannot open: /home/alice/photos/a/b.jpg: Permission denied")
    assert msg == "cannot open: photos/a/b.jpg: Permission denied"
    described = report.strip_dirs("m@1 fp32 on ONNX Runtime CPU (did not load: /opt/cuda/lib/libcudnn.so.9: no)")
    assert described == "m@1 fp32 on ONNX Runtime CPU (did not load: .../libcudnn.so.9: no)"
    assert common_root(["/a/b/c/x.jpg", "/a/b/y.jpg", "/a/b/c/d/z.jpg"]) == ["/a/b"]
    assert common_root(["rel/x.jpg", "rel/y/z.jpg"]) == ["rel"] and common_root(["x.jpg"]) == []


def test_no_absolute_path_leaks(tmp_path: Path, model_args: list[str], capsys) -> None:
    lib = tmp_path / "secret-place" / "photos"
    tiny_pngs(lib, 2)
    (lib / "empty.jpg").write_bytes(b"")
    code, _, err = run_cli([str(lib), "--html", str(tmp_path / "r.html"), "--jsonl", str(tmp_path / "o.jsonl"),
                            "--workers", "0", *model_args], capsys)
    assert code == 3, err
    html = (tmp_path / "r.html").read_text()
    assert str(tmp_path) not in html and "secret-place" not in html
    _, data = page_data(html)
    assert sorted(d["r"]["path"] for d in data) == ["photos/empty.jpg", "photos/img_0000.png", "photos/img_0001.png"]


def test_thumbnails_of_every_kind_of_image(tmp_path: Path) -> None:
    expect = make_library(tmp_path / "lib")
    for name, want in expect.items():
        path = os.path.join(os.fsencode(str(tmp_path / "lib")), name.encode().replace(b"\\xe9", b"\xe9")) \
            if "\\x" in name else str(tmp_path / "lib" / name)
        thumb = make_thumbnail(os.fsdecode(path), 180_000_000)
        if "kind" in want:
            assert thumb is None, name
            continue
        assert thumb is not None, name
        with Image.open(io.BytesIO(thumb)) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= report.THUMB_PX, name
            w, h = want["size"]
            assert (im.width >= im.height) == (w >= h), name  # upright, as EXIF orientation says
    assert make_thumbnail(str(tmp_path / "gone.jpg"), 180_000_000) is None


def test_big_images_are_scaled_and_bombs_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(encode(photo(2400, 1600), "JPEG"))
    with Image.open(io.BytesIO(make_thumbnail(str(big), 180_000_000))) as im:
        assert im.size == (160, 107)
    assert make_thumbnail(str(big), 1_000_000) is None  # over the pixel limit, refused from the header


@pytest.mark.parametrize("mode", ["embed", "folder", "none", "auto-folder"])
def test_thumbnail_placement(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tiny_pngs(tmp_path / "lib", 3)
    if mode == "auto-folder":
        monkeypatch.setattr(report, "EMBED_MAX", 2)
    target = tmp_path / "my report.html"
    w = ReportWriter(str(target), roots=[str(tmp_path / "lib")], thumbs="none" if mode == "none" else "all",
                     placement="auto" if mode in ("auto-folder", "none") else mode)
    for f in files:
        w.write(record(str(f)))
    w.write(error_record(str(tmp_path / "lib" / "x.jpg"), "decode", "empty file", model="t@00000000"))
    w.close()
    summary, data = page_data(target.read_text())
    thumbs = [d["t"] for d in data]
    assert thumbs[3] is None  # an error record has no thumbnail
    folder = tmp_path / "my report.thumbs"
    if mode == "embed":
        assert summary["thumbs"] == "embedded" and all(t.startswith("data:image/jpeg;base64,") for t in thumbs[:3])
        Image.open(io.BytesIO(base64.b64decode(thumbs[0].split(",", 1)[1]))).verify()
        assert not folder.exists()
    elif mode == "none":
        assert summary["thumbs"] == "none" and thumbs == [None] * 4
    else:
        assert summary["thumbs"] == "folder" and summary["thumb_dir"] == "my%20report.thumbs"
        assert thumbs[:3] == [0, 1, 2] and sorted(os.listdir(folder)) == ["000000.jpg", "000001.jpg", "000002.jpg"]
        # A second report replaces its own folder, never someone else's.
        w = ReportWriter(str(target), roots=[], placement="folder")
        w.write(record(str(files[0])))
        w.close()
        assert sorted(os.listdir(folder)) == ["000000.jpg"]
        (folder / "notes.txt").write_text("mine")
        w = ReportWriter(str(target), roots=[], placement="folder")
        w.write(record(str(files[0])))
        with pytest.raises(report.ReportError, match="not a thumbnail folder"):
            w.close()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary file left


def test_auto_thumbnails_stay_within_their_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tiny_pngs(tmp_path / "lib", 40)
    monkeypatch.setattr(report, "THUMB_GRACE", 0)
    monkeypatch.setattr(report, "THUMB_BUDGET", 0.0)  # nothing to spend: no thumbnail at all ...
    w = ReportWriter(str(tmp_path / "r.html"), roots=[str(tmp_path / "lib")])
    for f in files:
        w.write(record(str(f), 0.9 if f.name.endswith("7.png") else 0.1))
    w.close()
    summary, data = page_data((tmp_path / "r.html").read_text())
    assert summary["thumbs_skipped"] == 40 and {d["t"] for d in data} == {"skipped"}
    # ... and a budget the unflagged files have used up still admits the flagged ones.
    monkeypatch.setattr(report, "THUMB_BUDGET", 1.0 / w._cores)  # 1 CPU s a second of scan ...
    w = ReportWriter(str(tmp_path / "r.html"), roots=[str(tmp_path / "lib")])
    w._started -= 1.0  # ... one second into the scan: 1 CPU s allowed, 0.6 s of it for files not flagged
    w._cpu, w._made = 0.8, 100  # as if thumbnails had cost 0.8 s so far
    for f in files:
        w.write(record(str(f), 0.9 if f.name.endswith("7.png") else 0.1))
    w.close()
    summary, data = page_data((tmp_path / "r.html").read_text())
    made = [d["r"]["path"] for d in data if isinstance(d["t"], str) and d["t"].startswith("data:")]
    assert made and all(p.endswith("7.png") for p in made) and summary["thumbs_skipped"] == 40 - len(made)


def test_the_summary_holds_model_speed_and_roots(tmp_path: Path, model_args: list[str], capsys) -> None:
    tiny_pngs(tmp_path / "lib", 4)
    (tmp_path / "lib" / "gen.png").write_bytes(a1111_png())
    target = tmp_path / "r.html"
    code, stdout, err = run_cli([str(tmp_path / "lib"), "--html", str(target), "--workers", "0", *model_args],
                                capsys)
    assert code == 0, err
    assert len(stdout.splitlines()) == 5  # the plain lines still go to stdout
    assert f"report: {target} (5 records, 5 thumbnails embedded)" in err
    summary, data = page_data(target.read_text())
    assert summary["roots"] == ["lib"] and summary["total"] == 5 and not summary["interrupted"]
    [m] = summary["models"]
    assert m["id"] == "test-cnn@00000000" and m["threshold"] == 0.5 and m["band"] == [0.4, 0.6]
    assert summary["speed"]["records"] == 5 and summary["speed"]["rate"] > 0
    gen = [d for d in data if d["r"]["path"] == "lib/gen.png"][0]
    assert gen["s"] == ["generator"] and gen["r"]["stage"] == "metadata"
    assert all(d["t"].startswith("data:image/jpeg") for d in data)


def test_html_flag_errors_are_one_line(tmp_path: Path, model_args: list[str], capsys) -> None:
    tiny_pngs(tmp_path / "lib", 1)
    lib = str(tmp_path / "lib")
    cases = [(["--html", str(tmp_path / "no" / "r.html")], "does not exist"),
             (["--html", lib], "is a folder"),
             (["--html-thumbs", "none"], "--html-thumbs needs --html FILE"),
             (["--html", str(tmp_path / "x"), "--jsonl", str(tmp_path / "x")], "same file")]
    for extra, message in cases:
        code, _, err = run_cli([lib, *extra, *model_args], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_resume_reports_the_whole_scan(tmp_path: Path, model_args: list[str], capsys) -> None:
    tiny_pngs(tmp_path / "lib", 4)
    out, target = tmp_path / "out.jsonl", tmp_path / "r.html"
    run_cli([str(tmp_path / "lib"), "--jsonl", str(out), "--no-state", "--workers", "0", *model_args], capsys)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]) + lines[2][:10])  # two records and a half-written line
    code, _, err = run_cli([str(tmp_path / "lib"), "--jsonl", str(out), "--resume", "--html", str(target),
                            "--no-state", "--workers", "0", *model_args], capsys)
    assert code == 0, err
    _, data = page_data(target.read_text())
    assert sorted(d["r"]["path"] for d in data) == [f"lib/img_{i:04d}.png" for i in range(4)]
    assert all(d["t"] for d in data)


def test_mai_report_from_json_lines(tmp_path: Path, model_args: list[str], capsys) -> None:
    from click.testing import CliRunner

    from mai_train.cli import cli

    tiny_pngs(tmp_path / "lib", 3)
    out = tmp_path / "out.jsonl"
    run_cli([str(tmp_path / "lib"), "--jsonl", str(out), "--workers", "0", *model_args], capsys)
    with out.open("ab") as f:
        f.write(b'{"schema": "mai.scan/1", "path": "half')  # a killed scan's last line
    target = tmp_path / "r.html"
    r = CliRunner().invoke(cli, ["report", str(out), "--html", str(target)])
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and "(3 records, 3 thumbnails embedded)" in r.output
    summary, data = page_data(target.read_text())
    assert summary["speed"] is None and summary["source"] == "out.jsonl" and summary["roots"] == ["lib"]
    assert summary["models"] == [{"id": "test-cnn@00000000", "records": 3}]  # not a shipped model: no threshold
    assert sorted(d["r"]["path"] for d in data) == [f"lib/img_{i:04d}.png" for i in range(3)]
    r = CliRunner().invoke(cli, ["report", str(out), "--html", str(target), "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    _, data = page_data(target.read_text())
    assert sorted(d["r"]["path"] for d in data)[0] == f"{tmp_path.name}/lib/img_0000.png"
    (tmp_path / "empty.jsonl").write_text("not json\n")
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "empty.jsonl"), "--html", str(target)])
    assert r.exit_code != 0 and "no mai.scan/1 records" in str(r.exception)


def test_mai_report_needs_no_torch(tmp_path: Path) -> None:
    (tmp_path / "o.jsonl").write_text(json.dumps(record("a/b.png")) + "\n")
    code = ("import sys\nfrom mai_train.cli import main\n"
            f"sys.argv = ['mai', 'report', {str(tmp_path / 'o.jsonl')!r}, '--html', {str(tmp_path / 'r.html')!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    from support.scan import scan_env

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=scan_env())
    assert "NO-TORCH" in r.stderr and (tmp_path / "r.html").exists(), r.stderr
    # A report that cannot be written is one line and exit status 2.
    bad = [sys.executable, "-c", "import sys; from mai_train.cli import main; sys.argv[0] = 'mai'; main()",
           "report", str(tmp_path / "o.jsonl"), "--html", str(tmp_path / "nowhere" / "r.html")]
    r = subprocess.run(bad, capture_output=True, text=True, env=scan_env())
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr, r.stderr


# ---------------------------------------------------------------------------- in a browser

def chromium() -> str | None:
    for name in (os.environ.get("MAI_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        if name and (found := shutil.which(name)):
            return found
    return None


needs_browser = pytest.mark.skipif(chromium() is None, reason="no Chromium here: the HTML report's browser tests "
                                   "need one (apt-get install chromium, as .ci/run does; or set MAI_CHROMIUM)")


def browser(*args: str, timeout: float = 120) -> str:
    r = subprocess.run([chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                        "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def dom(page: Path, hash_: str = "") -> str:
    out = browser("--dump-dom", page.as_uri() + hash_)
    assert 'data-ready="1"' in out, out[-2000:]  # the page's script ran to its end
    return out


def count(html: str, id_: str) -> int:
    m = re.search(rf'id="{id_}">([\d,]+)<', html)
    assert m, id_
    return int(m.group(1).replace(",", ""))


@needs_browser
def test_the_page_counts_and_filters_in_a_browser(tmp_path: Path, model_args: list[str], capsys) -> None:
    lib = tmp_path / "lib"
    tiny_pngs(lib, 6)
    (lib / "gen.png").write_bytes(a1111_png())
    (lib / EVIL_NAME).parent.mkdir()
    (lib / EVIL_NAME).write_bytes(encode(photo(), "PNG"))
    (lib / "empty.jpg").write_bytes(b"")
    (lib / "text.jpg").write_bytes(b"not an image\n")
    target, out = tmp_path / "report.html", tmp_path / "out.jsonl"
    code, _, err = run_cli([str(lib), "--html", str(target), "--jsonl", str(out), "--workers", "0", *model_args],
                           capsys)
    assert code == 3, err
    recs = read_jsonl(out)
    verdicts = {v: sum(r["verdict"] == v for r in recs) for v in ("synthetic", "authentic", "uncertain", "error")}

    page = dom(target)
    for v, n in verdicts.items():
        assert count(page, f"count-{v}") == n, v
    assert count(page, "shown-count") == count(page, "total-count") == len(recs) == 10
    assert page.count('class="card ') == 10 and page.count('<img loading="lazy"') == 8  # errors: no thumbnail
    assert "data-pwned" not in page.split("<body")[1].split(">")[0]  # nothing injected ran
    assert "<img src=\"x\"" not in page and "&lt;script&gt;" in page
    # Filters given in the URL, as a user's choices are kept there.
    errors = dom(target, "#verdict=error")
    assert count(errors, "shown-count") == 2 and errors.count('class="card v-error"') == 2
    assert errors.count('class="card ') == 2 and "decode: empty file" in errors
    assert re.search(r'<tbody id="error-rows">(<tr>.*?</tr>){2}</tbody>', errors)  # the error list, with reasons
    gen = dom(target, "#signal=generator")
    assert count(gen, "shown-count") == 1 and "png:parameters · AUTOMATIC1111" in gen
    assert count(dom(target, "#signal=none&stage=cnn"), "shown-count") == 7
    found = dom(target, "#q=IMG_000")  # case-insensitive search on the path
    assert count(found, "shown-count") == 6
    by_score = dom(target, "#sort=score-asc&verdict=authentic")
    scores = [float(s) for s in re.findall(r'class="score">([\d.]+)<', by_score)]
    assert scores == sorted(scores) and len(scores) == verdicts["authentic"]

    shot = tmp_path / "shot.png"
    browser(f"--screenshot={shot}", "--window-size=1280,900", target.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1280, 900) and len(im.convert("RGB").resize((64, 45)).getcolors(64 * 45)) > 50


@needs_browser
def test_markup_in_metadata_never_runs_in_a_browser(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in hostile_records("/home/x/lib")))
    target = tmp_path / "r.html"
    report_from_jsonl([str(out)], str(target))
    page = dom(target)
    body = page.split("<body", 1)[1]
    assert "data-pwned" not in body.split(">")[0] and not re.search(r"<img[^>]*src=\"x\"", body)
    assert not re.search(r"<script>document", body) and count(page, "shown-count") == 3
    assert "/home/x" not in page
    detail = dom(target, "#q=meta")  # the one record whose metadata holds markup, shown as text
    assert count(detail, "shown-count") == 1 and "&lt;/script&gt;&lt;img src=x" in detail


@needs_browser
def test_a_100000_record_report_opens(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_report import fake_records

    target = tmp_path / "big.html"
    w = ReportWriter(str(target), roots=["/data/photos"], thumbs="none")
    synthetic = 0
    for r in fake_records(100_000):
        synthetic += r["verdict"] == "synthetic"
        w.write(r)
    w.close()
    page = dom(target)
    assert count(page, "total-count") == 100_000 and page.count('class="card ') == 200
    assert "page 1 of 500" in page
    last = -(-synthetic // 200)
    tail = dom(target, f"#verdict=synthetic&page={last}")
    assert count(tail, "shown-count") == synthetic and f"page {last} of {last}" in tail
    assert tail.count('class="card v-synthetic"') == synthetic - (last - 1) * 200
