"""The walk rules: recursion, order, extensions and sniffing, hidden entries,
include/exclude globs, symbolic links (cycles, once), problems as WalkErrors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.scan import encode, photo

from scanner import formats
from scanner import walk as walk_mod
from scanner.walk import Entry, WalkError, WalkOptions, walk


def _tree(root: Path) -> Path:
    png = encode(photo(), "PNG")
    files = {
        "b.png": png, "a.JPG": encode(photo(), "JPEG"), "c.txt": b"hello", "noext": png, "notes": b"text",
        "sub/d.webp": encode(photo(), "WEBP"), "sub/deeper/e.png": png, "sub/thumbs/t.png": png,
        ".hidden.png": png, ".cache/f.png": png, "z/readme.md": b"# hi",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _names(items: list, root: Path) -> list[str]:
    return [os.path.relpath(i.path, root) for i in items if isinstance(i, Entry)]


def test_default_rules_and_order(tmp_path: Path) -> None:
    root = _tree(tmp_path / "lib")
    got = list(walk([str(root)]))
    assert all(isinstance(i, Entry) for i in got)
    # Files of a folder by name, then its sub-folders by name, depth first; extension
    # case-insensitive; the extension-less PNG recognised by content; text skipped.
    assert _names(got, root) == ["a.JPG", "b.png", "noext", "sub/d.webp", "sub/deeper/e.png", "sub/thumbs/t.png"]
    e = got[0]
    assert e.key == os.path.realpath(root / "a.JPG") and e.size == (root / "a.JPG").stat().st_size
    assert e.mtime_ns == (root / "a.JPG").stat().st_mtime_ns
    assert list(walk([str(root)])) == got  # deterministic


def test_hidden_recursive_all_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "lib")
    assert {".hidden.png", ".cache/f.png"} <= set(_names(list(walk([str(root)], WalkOptions(hidden=True))), root))
    assert _names(list(walk([str(root)], WalkOptions(recursive=False))), root) == ["a.JPG", "b.png", "noext"]
    # --all-files: every file is sniffed; text files are still not images.
    assert "c.txt" not in _names(list(walk([str(root)], WalkOptions(all_files=True))), root)
    (root / "image.dat").write_bytes(encode(photo(), "PNG"))
    assert "image.dat" in _names(list(walk([str(root)], WalkOptions(all_files=True))), root)
    assert "image.dat" not in _names(list(walk([str(root)])), root)
    # A hidden PATH argument itself is walked.
    assert _names(list(walk([str(root / ".cache")])), root) == [".cache/f.png"]


def test_include_exclude(tmp_path: Path) -> None:
    root = _tree(tmp_path / "lib")
    names = _names(list(walk([str(root)], WalkOptions(include=("*.png",)))), root)
    assert names == ["b.png", "sub/deeper/e.png", "sub/thumbs/t.png"]
    names = _names(list(walk([str(root)], WalkOptions(exclude=("thumbs",)))), root)  # prunes the folder
    assert "sub/thumbs/t.png" not in names and "sub/deeper/e.png" in names
    names = _names(list(walk([str(root)], WalkOptions(exclude=("sub/deeper/*",)))), root)  # a path glob
    assert "sub/deeper/e.png" not in names and "sub/thumbs/t.png" in names
    names = _names(list(walk([str(root)], WalkOptions(include=("sub/*",)))), root)
    assert names == ["sub/d.webp"]


def test_explicit_file_is_always_scanned(tmp_path: Path) -> None:
    p = tmp_path / "weird.name"
    p.write_bytes(b"not an image")
    assert [i.path for i in walk([str(p)])] == [str(p)]


def test_symlink_cycles_and_links_followed_once(tmp_path: Path) -> None:
    root = _tree(tmp_path / "lib")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.png").write_bytes(encode(photo(), "PNG"))
    os.symlink(root, root / "sub" / "loop")  # a cycle back to the top
    os.symlink(outside, root / "link-out")  # a link to a folder outside
    os.symlink(outside, root / "sub" / "link-again")  # the same folder again
    os.symlink(root / "b.png", root / "alias.png")  # a link to a file
    os.symlink(tmp_path / "nothing.png", root / "broken.png")
    got = list(walk([str(root), str(root / "sub")]))  # overlapping PATHs too
    names = _names(got, root)
    assert names.count("link-out/o.png") + names.count("sub/link-again/o.png") == 1
    assert not any("loop" in n for n in names)
    assert len(names) == len(set(names))
    alias = next(i for i in got if isinstance(i, Entry) and i.path.endswith("alias.png"))
    assert alias.key == os.path.realpath(root / "b.png")
    errors = [i for i in got if isinstance(i, WalkError)]
    assert [(os.path.basename(e.path), e.kind) for e in errors] == [("broken.png", "io")]


def test_unreadable_folder_is_an_error_and_walk_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "lib")
    real = os.scandir

    def scandir(path: str):  # root reads anything, so deny by hand
        if str(path).endswith("deeper"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(walk_mod.os, "scandir", scandir)
    got = list(walk([str(root)]))
    errors = [i for i in got if isinstance(i, WalkError)]
    assert len(errors) == 1 and errors[0].kind == "io" and "Permission denied" in errors[0].message
    assert "sub/thumbs/t.png" in _names(got, root)


def test_fifo_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    os.mkfifo(root / "pipe.png")
    (root / "ok.png").write_bytes(encode(photo(), "PNG"))
    assert _names(list(walk([str(root)])), root) == ["ok.png"]
    os.mkfifo(root / "noext-pipe")
    assert _names(list(walk([str(root)], WalkOptions(all_files=True))), root) == ["ok.png"]
    [err] = list(walk([str(root / "pipe.png")]))
    assert isinstance(err, WalkError) and err.kind == "unsupported"


def test_missing_root_and_vanishing(tmp_path: Path) -> None:
    [err] = list(walk([str(tmp_path / "nope")]))
    assert isinstance(err, WalkError) and err.kind == "vanished"


def test_non_utf8_names(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write(encode(photo(), "PNG"))
    [e] = list(walk([str(tmp_path)]))
    assert os.fsencode(e.path) == raw and os.fsencode(e.key) == raw


def test_extensions_follow_decoders(monkeypatch: pytest.MonkeyPatch) -> None:
    exts = formats.image_extensions()
    assert {".jpg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp"} <= exts
    assert (".avif" in exts) == formats.avif_available()
    assert (".heic" in exts) == formats.heif_available()


def test_huge_folders_stream_and_trailing_slash_globs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "lib")
    want = sorted(_names(list(walk([str(root)])), root))
    monkeypatch.setattr(walk_mod, "SORT_LIMIT", 2)  # every folder is "huge": no sorting, nothing lost
    assert sorted(_names(list(walk([str(root)])), root)) == want
    monkeypatch.undo()
    names = _names(list(walk([str(root)], WalkOptions(exclude=("thumbs/",)))), root)
    assert "sub/thumbs/t.png" not in names and "sub/deeper/e.png" in names
