"""F0 (confirmed case) inputs, each accepted only from a configured, signed source.

Signed envelope (``bzgw-f0/v1``), one JSON object::

    {"format": "bzgw-f0/v1",
     "kind": "bluezone-infof" | "bluezone-upload" | "gaen-export" | "gaen-json" | "identity",
     "case": "HN-0042",                # label used in reports (may be empty)
     "signer": "3f2a9c0d1e4b5a67",     # key id: first 16 hex digits of SHA-256(SPKI DER)
     "alg": "ed25519" | "ecdsa-p256-sha256",
     "payload": "<base64 of the inner file>",
     "signature": "<base64>"}

The signature covers ``b"bzgw-f0/v1\\n" + kind + b"\\n" + case + b"\\n" + payload`` (UTF-8):
Ed25519 (64 bytes) or ECDSA P-256 with SHA-256 (DER). The same object without ``payload`` in
a file ``<name>.sig`` next to the inner file is a detached signature. A published EN key
export zip (``export.bin`` + ``export.sig``) is also accepted as is when one of its signatures
verifies under a configured ECDSA P-256 key, as phones verify it. Signer keys are PEM public
keys listed in ``matcher.f0_signers``; :func:`sign_f0` makes envelopes (demo, tests,
health-office tooling).

Inner files:

- ``bluezone-infof``: what the app's exposure push carries, ``{"data": [{"daily_key",
  "time_start", "time_end", "max"}, ...]}`` (or that JSON as the string value of ``InfoF``);
  each entry is one case, and every ID in its window is derived.
- ``bluezone-upload``: an F0's own upload ``{"base_id", "time"}`` (base key and its UTC
  midnight); IDs are derived for the retention window before ``now``.
- ``gaen-export``: the zip above; ``gaen-json``: ``{"temporaryExposureKeys": [{"key" (base64),
  "rollingStartNumber", "rollingPeriod"}]}`` (the publish API shape) or ``{"keys":
  [{"key_data", "rolling_start_interval_number", "rolling_period"}]}``.
- ``identity``: ``{"identities": [{"case", "cccd" | "phone" | "subject", "since", "until"}]}``;
  each identity is one case matched against check-in subjects and phones.

Every malformed input raises :class:`~core.errors.F0InputError` naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import F0InputError
from matcher import en_export, f0_parse
from matcher.f0_parse import EN_TOLERANCE_S, MAX_SPAN_DAYS
from matcher.ids import IdBlock

FORMAT = "bzgw-f0/v1"
KINDS = ("bluezone-infof", "bluezone-upload", "gaen-export", "gaen-json", "identity")
MAX_FILE = 64 * 1024 * 1024
MAX_IDS = 20_000_000
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Signer:
    """A health-authority key F0 input may be signed with."""

    key_id: str
    key: PublicKey
    source: str


@dataclass
class F0Case:
    """One confirmed case (or one key-export batch, which does not say whose keys are whose).

    Attributes:
        label: how reports name it.
        kind: ``bluezone``, ``gaen`` or ``identity``.
        block: the case's tracing IDs with their validity windows (ID kinds only).
        tolerance_s: how far outside its window an ID still counts (phone clock error, the
            EN ±2 h rule); the gateway's own clock uncertainty is added per record.
        subjects: exact check-in subjects (identity kind).
        phones: normalised phones (identity kind).
        since: earliest check-in considered (identity kind).
        until: latest check-in considered (identity kind).
    """

    label: str
    kind: Literal["bluezone", "gaen", "identity"]
    block: IdBlock | None = None
    tolerance_s: float = 0.0
    subjects: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None

    @property
    def n_ids(self) -> int:
        """Tracing IDs derived for this case."""
        return len(self.block) if self.block is not None else 0


@dataclass
class F0:
    """A verified F0 input."""

    source: str
    format: str
    signer: str
    cases: list[F0Case] = field(default_factory=list)
    skipped: int = 0  # unusable entries (e.g. malformed keys in an export), counted

    @property
    def n_ids(self) -> int:
        """Tracing IDs over all cases."""
        return sum(c.n_ids for c in self.cases)


# ---------------------------------------------------------------- keys and signatures


def key_id(key: PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the key's SubjectPublicKeyInfo DER."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def load_signers(paths: list[Path]) -> list[Signer]:
    """PEM public keys (Ed25519 or ECDSA P-256) of the configured F0 signers.

    Raises:
        F0InputError: unreadable file or an unsupported key type.
    """
    out = []
    for p in paths:
        try:
            key = serialization.load_pem_public_key(Path(p).read_bytes())
        except OSError as err:
            raise F0InputError(f"{p}: cannot read F0 signer key: {err.strerror}") from err
        except ValueError as err:
            raise F0InputError(f"{p}: not a PEM public key: {err}") from err
        if not (isinstance(key, Ed25519PublicKey) or (
                isinstance(key, ec.EllipticCurvePublicKey)
                and isinstance(key.curve, ec.SECP256R1))):
            raise F0InputError(f"{p}: F0 signer key must be Ed25519 or ECDSA P-256")
        out.append(Signer(key_id(key), key, str(p)))
    return out


def signed_message(kind: str, payload: bytes, case: str = "") -> bytes:
    """The bytes an F0 signature covers."""
    return FORMAT.encode() + b"\n" + kind.encode() + b"\n" + case.encode() + b"\n" + payload


def detect_kind(payload: bytes) -> str:
    """The F0 kind of an inner file, from its content.

    Raises:
        F0InputError: not a zip and not a JSON shape this module knows.
    """
    if payload[:4] == b"PK\x03\x04":
        return "gaen-export"
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        if isinstance(doc.get("InfoF"), str):
            try:
                inner = json.loads(doc["InfoF"])
            except ValueError:
                inner = None
            if isinstance(inner, dict):
                doc = inner
        for key, kind in (("data", "bluezone-infof"), ("base_id", "bluezone-upload"),
                          ("temporaryExposureKeys", "gaen-json"), ("keys", "gaen-json"),
                          ("identities", "identity")):
            if key in doc:
                return kind
    raise F0InputError("cannot tell what kind of F0 input this is; name the kind "
                       f"({', '.join(KINDS)})")


@overload
def sign_f0(source: bytes | Path, private_key: PrivateKey, *, kind: str | None = None,
            case: str = "", detached: bool = False, out: None = None) -> bytes: ...


@overload
def sign_f0(source: bytes | Path, private_key: PrivateKey, *, kind: str | None = None,
            case: str = "", detached: bool = False, out: Path) -> Path: ...


def sign_f0(source: bytes | Path, private_key: PrivateKey, *, kind: str | None = None,
            case: str = "", detached: bool = False, out: Path | None = None) -> bytes | Path:
    """Sign an F0 input: a ``bzgw-f0/v1`` envelope, or with ``detached`` its ``.sig`` file.

    Args:
        source: the inner file's bytes, or its path.
        private_key: the health authority's Ed25519 or ECDSA P-256 key.
        kind: one of :data:`KINDS`; detected from the content when omitted.
        case: the label reports use (signed too).
        detached: produce the ``.sig`` companion instead of an envelope.
        out: write the result there and return the path (else return the bytes).

    Raises:
        F0InputError: unknown or undetectable kind, unreadable source, unsupported key.
    """
    payload = _read(source) if isinstance(source, Path) else bytes(source)
    kind = kind or detect_kind(payload)
    if kind not in KINDS:
        raise F0InputError(f"unknown F0 kind {kind!r} (one of {', '.join(KINDS)})")
    msg = signed_message(kind, payload, case)
    if isinstance(private_key, Ed25519PrivateKey):
        alg, sig = "ed25519", private_key.sign(msg)
    elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1):
        alg, sig = "ecdsa-p256-sha256", private_key.sign(msg, ec.ECDSA(hashes.SHA256()))
    else:
        raise F0InputError("F0 signing key must be Ed25519 or ECDSA P-256")
    env: dict[str, str] = {"format": FORMAT, "kind": kind, "case": case,
                           "signer": key_id(private_key.public_key()), "alg": alg}
    if not detached:
        env["payload"] = base64.b64encode(payload).decode()
    env["signature"] = base64.b64encode(sig).decode()
    data = json.dumps(env, indent=1).encode()
    if out is None:
        return data
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(data)
    return Path(out)


def as_signers(items: Sequence[Signer | PublicKey | Path | str]) -> list[Signer]:
    """Signers from :class:`Signer` objects, public keys, or PEM file paths."""
    out: list[Signer] = []
    for it in items:
        if isinstance(it, Signer):
            out.append(it)
        elif isinstance(it, Path | str):
            out.extend(load_signers([Path(it)]))
        elif isinstance(it, Ed25519PublicKey | ec.EllipticCurvePublicKey):
            out.append(Signer(key_id(it), it, "in memory"))
        else:
            raise F0InputError(f"not an F0 signer key: {type(it).__name__}")
    return out


def _verify(env: dict[str, Any], payload: bytes, signers: list[Signer]) -> str:
    kind, case, sid = env.get("kind"), env.get("case", ""), env.get("signer")
    if kind not in KINDS:
        raise F0InputError(f"envelope kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(case, str) or not isinstance(sid, str):
        raise F0InputError("envelope case and signer must be strings")
    signer = next((s for s in signers if s.key_id == sid), None)
    if signer is None:
        raise F0InputError(f"F0 input is signed by key {sid[:32]!r}, which is not a "
                           "configured F0 signer (matcher.f0_signers)")
    sig = _b64(env.get("signature"), "signature")
    msg = signed_message(kind, payload, case)
    try:
        if isinstance(signer.key, Ed25519PublicKey):
            signer.key.verify(sig, msg)
        else:
            signer.key.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as err:
        raise F0InputError(f"F0 signature does not verify under key {sid}") from err
    return sid


def _b64(v: object, what: str) -> bytes:
    if not isinstance(v, str):
        raise F0InputError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError) as err:
        raise F0InputError(f"{what} is not valid base64") from err


# ---------------------------------------------------------------- loading


def load_f0(path: Path, signers: Sequence[Signer | PublicKey | Path | str], *,
            now: float | None = None, window_days: float = 21) -> F0:
    """Read, verify and parse an F0 file.

    Args:
        path: a signed envelope, a file with a detached ``<path>.sig``, or a signed EN key
            export zip.
        signers: the configured signer keys: :class:`Signer` objects (:func:`load_signers`),
            public keys, or PEM paths.
        now: reference time for inputs without an end (a Bluezone upload); default now.
        window_days: how far back such inputs are expanded.

    Raises:
        F0InputError: unreadable, unsigned, signed by an unknown key, bad signature, or
            malformed content.
    """
    p = Path(path)
    data = _read(p)
    sig_path = p.with_name(p.name + ".sig")
    detached = _read(sig_path) if sig_path.is_file() else None
    return parse_f0(data, signers, name=p.name, detached=detached, now=now,
                    window_days=window_days)


def _read(p: Path) -> bytes:
    try:
        size = p.stat().st_size
        if size > MAX_FILE:
            raise F0InputError(f"{p}: {size} bytes is larger than an F0 input may be "
                               f"({MAX_FILE})")
        return p.read_bytes()
    except OSError as err:
        raise F0InputError(f"{p}: cannot read: {err.strerror}") from err


def parse_f0(data: bytes, signers: Sequence[Signer | PublicKey | Path | str], *,
             name: str = "f0", detached: bytes | None = None, now: float | None = None,
             window_days: float = 21) -> F0:
    """Verify and parse F0 bytes (see :func:`load_f0`)."""
    signers = as_signers(signers)
    if not signers:
        raise F0InputError("no F0 signer keys are configured (matcher.f0_signers): "
                           "unsigned F0 input is never accepted")
    ref = time.time() if now is None else now
    if detached is not None:
        env = _json(detached, f"{name}.sig")
        if not isinstance(env, dict) or env.get("format") != FORMAT:
            raise F0InputError(f"{name}.sig is not a {FORMAT} signature")
        sid = _verify(env, data, signers)
        return _parse(env["kind"], data, env.get("case") or Path(name).stem, sid, name, ref,
                      window_days)
    if data[:4] == b"PK\x03\x04":
        export_bin, export_sig = en_export.read_export_zip(data)
        p256 = [(s.key_id, s.key) for s in signers
                if isinstance(s.key, ec.EllipticCurvePublicKey)]
        sid = en_export.verify_export(export_bin, export_sig, p256)
        return _parse("gaen-export", data, Path(name).stem, sid, name, ref, window_days)
    env = _json(data, name) if data.lstrip()[:1] == b"{" else None
    if not isinstance(env, dict) or env.get("format") != FORMAT:
        raise F0InputError(f"{name} is not signed: expected a {FORMAT} envelope, a detached "
                           f"{name}.sig, or a signed key export zip")
    payload = _b64(env.get("payload"), "payload")
    sid = _verify(env, payload, signers)
    return _parse(env["kind"], payload, env.get("case") or Path(name).stem, sid, name, ref,
                  window_days)


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise F0InputError(f"{what}: not valid JSON: {err}") from err


def _parse(kind: str, payload: bytes, case: str, sid: str, name: str, now: float,
           window_days: float) -> F0:
    f0 = F0(source=name, format=kind, signer=sid)
    if kind == "bluezone-infof":
        f0.cases = f0_parse.bluezone_infof(_json(payload, kind), case)
    elif kind == "bluezone-upload":
        f0.cases = f0_parse.bluezone_upload(_json(payload, kind), case, now, window_days)
    elif kind == "gaen-export":
        f0.cases, f0.skipped = f0_parse.gaen_export(payload, case)
    elif kind == "gaen-json":
        f0.cases, f0.skipped = f0_parse.gaen_json(_json(payload, kind), case)
    else:
        f0.cases = f0_parse.identities(_json(payload, kind), case)
    if f0.n_ids > MAX_IDS:
        raise F0InputError(f"{name}: {f0.n_ids} IDs is more than one match handles "
                           f"({MAX_IDS}); split the input")
    return f0


__all__ = [
    "EN_TOLERANCE_S",
    "F0",
    "MAX_SPAN_DAYS",
    "F0Case",
    "Signer",
    "as_signers",
    "detect_kind",
    "key_id",
    "load_f0",
    "load_signers",
    "parse_f0",
    "sign_f0",
    "signed_message",
]
