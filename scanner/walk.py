"""Walk: turn the PATH arguments into a stream of files to scan.

Rules (what `mai-scan --help` promises):

- Folders are walked recursively (`recursive=False`: only their own files), in a
  deterministic order: within a folder, files by name first, then sub-folders by
  name, depth first (past 100,000 entries a folder's rest comes in the file
  system's order, to keep memory flat). A PATH that names a file is always
  scanned, whatever its name.
- A file is a candidate when its extension is an image's (case-insensitive; AVIF
  when Pillow has the codec, HEIC/HEIF when pillow-heif is installed). A file with
  no extension is sniffed (its first bytes); `all_files=True` sniffs every file.
  A file with an image extension but other content is still scanned: it becomes
  an error record (kind `decode`), because the user will want to know.
- Entries whose name starts with "." are skipped unless `hidden=True`; PATH
  arguments themselves never are.
- `include` globs (any match selects a file) narrow the candidates; `exclude`
  globs drop files and prune folders. A glob without "/" matches the name, one
  with "/" the path relative to its PATH argument (POSIX separators). As in
  .gitignore, `*` and `?` stay within one name, `**` spans folders and `[...]`
  is a character class: `thumbs/*` is a folder's files, `**/cache/**` any depth.
- Symbolic links are followed; each real folder is walked once, by its
  (st_dev, st_ino), which also makes link cycles and overlapping PATHs safe.
  FIFOs, sockets and devices are never opened (they can block forever).
- Problems become `WalkError`s (kind `io`: an unreadable folder, a broken link;
  `vanished`: gone between listing and stat) rather than exceptions.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from scanner.formats import HEAD_BYTES, image_extensions, missing_codec, sniff

SORT_LIMIT = 100_000  # entries of one folder sorted by name; more are walked in the file system's order


@dataclass(frozen=True, slots=True)
class Entry:
    """A file to scan. `path` is as walked (what the record shows); `key` is the
    resolved absolute path the scan state is keyed by."""

    path: str
    key: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class WalkError:
    """A walk problem that becomes an error record for `path`."""

    path: str
    kind: str
    message: str


@dataclass(frozen=True)
class WalkOptions:
    recursive: bool = True
    hidden: bool = False
    all_files: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extensions: frozenset[str] = field(default_factory=image_extensions)


@lru_cache(maxsize=256)
def _glob_re(pattern: str) -> re.Pattern[str]:
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            j += 1 if pattern[j:j + 1] == "!" else 0
            j += 1 if pattern[j:j + 1] == "]" else 0  # a "]" first is a member, not the end
            j = pattern.find("]", j)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j].replace("\\", "\\\\")
                body = "^" + body[1:] if body.startswith("!") else "\\" + body if body.startswith("^") else body
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _matches(patterns: Sequence[str], name: str, rel: str) -> bool:
    for p in patterns:
        p = p.rstrip("/") or p  # "thumbs/" means the folder "thumbs"
        if _glob_re(p).match(rel if "/" in p else name):
            return True
    return False


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _read_head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError:
        return b""  # unreadable: not recognisable either; the file is simply not a candidate


def _entry(path: str, key: str, st: os.stat_result) -> Entry:
    return Entry(path, key, st.st_size, st.st_mtime_ns)


def walk(roots: Sequence[str], opts: WalkOptions | None = None) -> Iterator[Entry | WalkError]:
    """Yield an `Entry` for each file to scan and a `WalkError` for each problem."""
    opts = opts or WalkOptions()
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        try:
            st = os.stat(root)
        except FileNotFoundError:
            kind = "io" if os.path.islink(root) else "vanished"
            yield WalkError(root, kind, "broken symbolic link" if kind == "io" else "no such file or folder")
            continue
        except OSError as e:
            yield WalkError(root, "io", _why(e))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(root, st, opts, seen_dirs)
        elif stat.S_ISREG(st.st_mode):
            yield _entry(root, os.path.realpath(root), st)
        else:
            yield WalkError(root, "unsupported", "not a regular file (a FIFO, socket or device)")


def _listing(folder: str) -> Iterator[os.DirEntry[str] | WalkError]:
    """A folder's entries sorted by name; past SORT_LIMIT entries (a camera dump
    of a million files) the rest come in the file system's order instead, so a
    huge folder does not cost memory in proportion to its size."""
    try:
        with os.scandir(folder) as it:
            head = list(itertools.islice(it, SORT_LIMIT))
            if len(head) < SORT_LIMIT:
                head.sort(key=lambda e: e.name)
                yield from head
                return
            yield from head
            yield from it
    except FileNotFoundError:
        yield WalkError(folder, "vanished", "the folder vanished during the scan")
    except OSError as e:
        yield WalkError(folder, "io", f"cannot read folder: {_why(e)}")


def _walk_dir(root: str, root_st: os.stat_result, opts: WalkOptions,
              seen: set[tuple[int, int]]) -> Iterator[Entry | WalkError]:
    ident = (root_st.st_dev, root_st.st_ino)
    if ident in seen:
        return
    seen.add(ident)
    # Depth-first with an explicit stack: deep trees must not hit the recursion limit.
    stack: list[tuple[str, str]] = [(root, "")]  # (folder as walked, path relative to root)
    while stack:
        folder, rel = stack.pop()
        real_folder = os.path.realpath(folder)
        subdirs: list[tuple[str, str]] = []
        for de in _listing(folder):
            if isinstance(de, WalkError):
                yield de
                continue
            name = de.name
            if not opts.hidden and name.startswith("."):
                continue
            rel_name = f"{rel}/{name}" if rel else name
            if opts.exclude and _matches(opts.exclude, name, rel_name):
                continue
            try:
                # d_type answers these without a system call, except for links.
                is_link, is_dir, is_file = de.is_symlink(), de.is_dir(), de.is_file()
                if is_link and not (is_dir or is_file):
                    if not os.path.exists(de.path):
                        if _is_candidate_name(name, opts):
                            yield WalkError(de.path, "io", "broken symbolic link")
                        continue
                if is_dir:
                    if opts.recursive:
                        st = de.stat()  # (st_dev, st_ino): each real folder once, link cycles included
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            subdirs.append((de.path, rel_name))
                    continue
                if not is_file:
                    continue  # FIFOs, sockets, devices: opening one can block the scan forever
                if opts.include and not _matches(opts.include, name, rel_name):
                    continue
                if not _is_candidate(de.path, name, opts):
                    continue
                st = de.stat()  # follows links
            except FileNotFoundError:
                yield WalkError(de.path, "vanished", "the file vanished during the scan")
                continue
            except OSError as e:
                yield WalkError(de.path, "io", _why(e))
                continue
            key = os.path.realpath(de.path) if is_link else os.path.join(real_folder, name)
            yield _entry(de.path, key, st)
        stack.extend(reversed(subdirs))


def _is_candidate_name(name: str, opts: WalkOptions) -> bool:
    return os.path.splitext(name)[1].lower() in opts.extensions


def _is_candidate(path: str, name: str, opts: WalkOptions) -> bool:
    ext = os.path.splitext(name)[1].lower()
    if ext in opts.extensions:
        return True
    if ext and not opts.all_files:
        return False
    # No extension (or --all-files): the content decides. Only formats this machine
    # can decode count, so a HEIC without pillow-heif is not reported as an error.
    fmt = sniff(_read_head(path))
    return fmt is not None and missing_codec(fmt) is None
