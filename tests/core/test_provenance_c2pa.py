"""C2PA with the real c2pa-python: files signed here, offline, with a throwaway CA
and an ES256 signer made by `cryptography`, then read by MAI (mai.provenance and
mai-scan). The mocked reader tests in test_provenance.py cover the parsing rules;
these prove the real library's output reaches them. Skipped without the c2pa extra."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

c2pa = pytest.importorskip("c2pa", reason="the c2pa extra (c2pa-python) is not installed")
pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402
from support.scan import run_cli  # noqa: E402

from mai.provenance import read_provenance  # noqa: E402

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MAI tests")])


def _usage(sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not sign, crl_sign=not sign,
                         encipher_only=False, decipher_only=False)


@pytest.fixture(scope="module")
def signer() -> Any:
    """A CA and a leaf certificate for ES256 signing, valid for a day either side of now."""
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("MAI test CA")).issuer_name(_name("MAI test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - day).not_valid_after(now + day)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(_usage(False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("MAI test signer")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - day).not_valid_after(now + day)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key_pem, None))


def _signed(path: Path, signer: Any, fmt: str, source_type: str | None, agent: str = "Test Diffuser") -> Path:
    mime = {"JPEG": "image/jpeg", "PNG": "image/png"}[fmt]
    action: dict[str, Any] = {"action": "c2pa.created", "softwareAgent": {"name": agent, "version": "2.0"}}
    if source_type:
        action["digitalSourceType"] = IPTC + source_type
    manifest = {"claim_generator_info": [{"name": "MAI test generator", "version": "1.0"}], "title": path.name,
                "format": mime, "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}]}
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, fmt)
    out = io.BytesIO()
    with c2pa.Builder(json.dumps(manifest)) as builder:
        builder.sign(signer, mime, io.BytesIO(buf.getvalue()), out)
    path.write_bytes(out.getvalue())
    return path


def _read(path: Path) -> list[dict]:
    with Image.open(path) as im:
        return read_provenance(im, path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_signed_ai_manifest_is_read(tmp_path: Path, signer: Any, fmt: str) -> None:
    p = _signed(tmp_path / f"gen.{fmt.lower()}", signer, fmt, "trainedAlgorithmicMedia")
    assert _read(p) == [{"signal": "c2pa:manifest", "where": "C2PA manifest", "generator": "Test Diffuser 2.0",
                         "ai": True}]


def test_a_camera_manifest_is_not_ai(tmp_path: Path, signer: Any) -> None:
    p = _signed(tmp_path / "camera.jpg", signer, "JPEG", "digitalCapture", agent="Example Camera")
    (sig,) = _read(p)
    assert sig["signal"] == "c2pa:manifest" and sig["ai"] is False


def test_mai_scan_calls_a_signed_ai_image_synthetic(tmp_path: Path, signer: Any, capsys: Any) -> None:
    _signed(tmp_path / "gen.jpg", signer, "JPEG", "compositeWithTrainedAlgorithmicMedia")
    _signed(tmp_path / "camera.jpg", signer, "JPEG", "digitalCapture")
    code, out, err = run_cli([str(tmp_path), "--jsonl", "-", "--no-state", "--device", "cpu", "--workers", "0"],
                             capsys)
    assert code == 0, err
    recs = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert (recs["gen.jpg"]["verdict"], recs["gen.jpg"]["stage"]) == ("synthetic", "metadata")
    assert recs["gen.jpg"]["provenance"][0]["ai"] is True
    assert recs["camera.jpg"]["stage"] == "cnn"  # a manifest without AI never decides: the CNN does


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_remote_manifest_is_reported_not_fetched(tmp_path: Path, signer: Any, fmt: str) -> None:
    # c2pa-rs signing for a remote manifest: the file keeps only an XMP dcterms:provenance URL.
    mime = {"JPEG": "image/jpeg", "PNG": "image/png"}[fmt]
    url = "https://manifests.example.com/m.c2pa?id=1&v=2"  # the XMP holds it as &amp;
    manifest = {"claim_generator_info": [{"name": "MAI test generator", "version": "1.0"}], "format": mime,
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": IPTC + "trainedAlgorithmicMedia"}]}}]}
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, fmt)
    for embed in (False, True):
        out = io.BytesIO()
        with c2pa.Builder(json.dumps(manifest)) as builder:
            builder.set_remote_url(url)
            if not embed:
                builder.set_no_embed()
            builder.sign(signer, mime, io.BytesIO(buf.getvalue()), out)
        p = tmp_path / f"{embed}.{fmt.lower()}"
        p.write_bytes(out.getvalue())
        if embed:  # the embedded store is read; the reference to its copy adds nothing
            assert [s["signal"] for s in _read(p)] == ["c2pa:manifest"]
        else:  # never fetched (the reader does not even run), verdict left to the other signals
            assert _read(p) == [{"signal": "c2pa:remote", "where": "XMP dcterms:provenance", "generator": None,
                                 "ai": False, "url": url}]
