"""Scan records: the one place a record is built, and the `mai.scan/1` schema.

Every input file gives exactly one record, one JSON object per line (JSON Lines,
UTF-8, in fact pure ASCII: non-ASCII characters are written as \\u escapes, so no
line-splitting tool can cut a record). Fields, always all present, in this order:

=============  ==============================================================
``schema``     ``"mai.scan/1"``. A change to any field's meaning bumps it.
``path``       the file as walked: the PATH argument joined with the names
               below it (not resolved). Names are kept exactly, spaces, unicode
               and newlines included (JSON escapes them); bytes that are not
               UTF-8 (possible on POSIX file systems) appear as ``\\xNN``, a
               backslash, ``x`` and two hex digits, as ``ls -b`` shows them.
``verdict``    ``synthetic``, ``authentic``, ``uncertain`` or ``error``.
``score``      P(synthetic) from the stage that decided, 0..1 (6 decimals); a
               positive metadata signal counts as 1.0; null for errors.
``stage``      what decided: ``metadata`` (a provenance signal with
               ``"ai": true``), ``cnn`` (the image model, whatever its
               architecture: the CLIP probe by default; also for
               ``uncertain``), ``vlm`` (the second opinion); null for errors.
``scores``     every stage's score: ``{"cnn": float|null, "vlm": float|null}``.
               The image model always runs, so ``cnn`` is set even when metadata decided.
``provenance`` the signals found in the file's metadata, a list of
               ``{"signal", "where", "generator", "ai"}`` (see
               ``mai.provenance``); ``[]`` when none. A missing signal never
               lowers a score: metadata is easily stripped. One optional key:
               ``url``, only in a ``c2pa:remote`` signal (a C2PA manifest
               referenced by URL in XMP, never fetched; ``"ai": false``).
               Consumers should ignore keys they do not know.
``model``      the model id (``name@weights-hash``) that scored the file.
``width``      pixels, after EXIF orientation (a portrait photo stored
``height``     sideways reports its upright size); null when unknown.
``format``     the format the content announced (``JPEG``, ``PNG``, ...), not
               the extension; null when unknown.
``bytes``      the file's size; null when it could not be read.
``error``      null, or ``{"kind", "message"}`` with ``kind`` one of
               ``decode`` (not an image, corrupt, truncated, empty),
               ``io`` (unreadable file or folder, broken link),
               ``too_large`` (over the pixel limit, read from the header before
               decoding), ``unsupported`` (a format or file type with no
               decoder here) or ``vanished`` (deleted during the scan).
=============  ==============================================================

Verdict rule, in order: an error gives ``error``; a provenance signal with
``"ai": true`` gives ``synthetic`` (stage ``metadata``); a second-opinion score
gives ``synthetic`` when it is >= the second opinion's threshold, else
``authentic`` (stage ``vlm``); otherwise the CNN score: strictly inside the
uncertainty band (lo < score < hi) gives ``uncertain``, else ``synthetic`` when
score >= threshold, ``authentic`` below it (stage ``cnn``).

Records stream in completion order, not walk order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mai.errors import MaiError

SCHEMA = "mai.scan/1"
VERDICTS = ("synthetic", "authentic", "uncertain", "error")
#: The image model's stage, and its key in `scores`. The model is any detector (a CLIP
#: probe by default), so code and docs call this the *model* stage; the JSON name
#: stays "cnn" because records of schema mai.scan/1 carry it.
MODEL_STAGE = "cnn"
STAGES = ("metadata", MODEL_STAGE, "vlm")
ERROR_KINDS = ("decode", "io", "too_large", "unsupported", "vanished")
FIELDS = ("schema", "path", "verdict", "score", "stage", "scores", "provenance", "model",
          "width", "height", "format", "bytes", "error")
#: One line per field, in record order: the docs' record table is generated from
#: this (`docs/gen_docs.py`); the docstring above is the full definition.
FIELD_MEANINGS: dict[str, str] = {
    "schema": "`mai.scan/1`; a change to any field's meaning bumps it",
    "path": "the file as walked (PATH joined with the names below it); bytes that are not UTF-8 appear as `\\xNN`",
    "verdict": "`synthetic`, `authentic`, `uncertain` or `error`",
    "score": "P(synthetic) from the deciding stage (a positive metadata signal counts as 1.0); null for errors",
    "stage": "`metadata`, `cnn` (the image model, whatever its architecture: the CLIP probe by default; the "
             "name is kept for `mai.scan/1`) or `vlm`; null for errors",
    "scores": "every stage's score, `{\"cnn\": ..., \"vlm\": ...}`; the image model always runs",
    "provenance": "signals found in the metadata: `signal`, `where`, `generator`, `ai` (and `url` for a remote "
                  "C2PA manifest, `c2pa:remote`)",
    "model": "the model id, `name@` + the first 8 hex digits of its weights' SHA-256",
    "width": "pixels after EXIF orientation",
    "height": "pixels after EXIF orientation",
    "format": "what the content is (`JPEG`, `PNG`, ...), not the extension",
    "bytes": "file size",
    "error": "null, or `{\"kind\": \"" + "|".join(ERROR_KINDS) + "\", \"message\": ...}`",
}
FACT_KEYS = ("width", "height", "format", "bytes")
METADATA_SCORE = 1.0


@dataclass(frozen=True)
class Decision:
    """How scores become verdicts: the threshold, the uncertainty band (None: no
    band) and the threshold applied to a second opinion's P(synthetic)."""

    threshold: float
    band: tuple[float, float] | None = None
    second_threshold: float = 0.5

    @classmethod
    def make(cls, model_threshold: float, model_band: tuple[float, float] | None,
             threshold: float | None = None, band: tuple[float, float] | None = None,
             uncertain: bool = True) -> Decision:
        """The CLI's rule. The stored band was calibrated around the stored
        threshold, so `threshold` (an override) drops it unless `band` gives one;
        `uncertain=False` drops any band. An explicit band must hold the threshold."""
        t = model_threshold if threshold is None else threshold
        if not uncertain:
            b = None
        elif band is not None:
            if not band[0] <= t <= band[1]:
                raise MaiError(f"the uncertainty band {band[0]:g},{band[1]:g} must contain the threshold {t:g}; "
                               "widen it or change --threshold")
            b = band
        elif threshold is not None:
            b = None
        else:
            b = model_band
        if b is not None and not b[0] < b[1]:
            b = None  # a degenerate band [t, t] means "no band"
        return cls(float(t), b)

    def model_verdict(self, p: float) -> str:
        """The verdict of the image model's score alone (threshold and band)."""
        if self.band is not None and self.band[0] < p < self.band[1]:
            return "uncertain"
        return "synthetic" if p >= self.threshold else "authentic"


def display_path(path: str) -> str:
    """The path as a valid Unicode string: bytes that are not UTF-8 (surrogate
    escapes from `os.fsdecode`) become a visible `\\xNN`."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte (Windows names)
        raw = path.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def _round(p: float | None) -> float | None:
    return None if p is None else round(float(p), 6)


def _is_ai(provenance: list[dict[str, Any]]) -> bool:
    return any(isinstance(s, dict) and s.get("ai") is True for s in provenance)


def make_record(path: str, *, model: str, facts: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """A scored file's record. `facts` holds `scores` ({MODEL_STAGE, "vlm"}), `provenance`
    and the FACT_KEYS; it is also what the scan state stores, so a re-emitted
    record is rebuilt under the current decision (threshold, band)."""
    scores = facts.get("scores") or {}
    model_score, vlm = _round(scores.get(MODEL_STAGE)), _round(scores.get("vlm"))
    provenance = list(facts.get("provenance") or [])
    if _is_ai(provenance):
        verdict, stage, score = "synthetic", "metadata", METADATA_SCORE
    elif vlm is not None:
        verdict = "synthetic" if vlm >= decision.second_threshold else "authentic"
        stage, score = "vlm", vlm
    else:
        if model_score is None:
            raise ValueError(f"a scored record needs scores[{MODEL_STAGE!r}]")
        verdict, stage, score = decision.model_verdict(model_score), MODEL_STAGE, model_score
    return {
        "schema": SCHEMA, "path": display_path(path), "verdict": verdict, "score": score, "stage": stage,
        "scores": {MODEL_STAGE: model_score, "vlm": vlm}, "provenance": provenance, "model": model,
        **{k: facts.get(k) for k in FACT_KEYS}, "error": None,
    }


def error_record(path: str, kind: str, message: str, *, model: str | None,
                 facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """A file that could not be scored; `facts` keeps what was learnt (size, format)."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {kind!r}")
    facts = facts or {}
    return {
        "schema": SCHEMA, "path": display_path(path), "verdict": "error", "score": None, "stage": None,
        "scores": {MODEL_STAGE: None, "vlm": None}, "provenance": list(facts.get("provenance") or []), "model": model,
        **{k: facts.get(k) for k in FACT_KEYS}, "error": {"kind": kind, "message": message},
    }


def _clean(v: Any) -> Any:
    if isinstance(v, str):
        return display_path(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def to_line(record: dict[str, Any]) -> bytes:
    """One complete JSON line (ASCII, ending in a newline). Strings holding lone
    surrogates (a metadata field, an OS message) are made valid first, so the
    line is strict JSON that every parser accepts."""
    text = json.dumps(record, ensure_ascii=True, allow_nan=False, separators=(", ", ": "))
    if "\\ud" in text:  # maybe a lone surrogate (or a harmless pair): clean and redo
        text = json.dumps(_clean(record), ensure_ascii=True, allow_nan=False, separators=(", ", ": "))
    return text.encode("ascii") + b"\n"
