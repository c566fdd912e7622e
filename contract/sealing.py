"""Seal batches for the matcher (HPKE + Ed25519) and open them on the matcher side.

Wire format of one sealed batch (all lengths big-endian)::

    "BZ" | version (1 byte) | header length (2 bytes) | header (CBOR map)
         | HPKE enc ‖ ciphertext ‖ tag | Ed25519 signature (64 bytes)

The header (gateway id, sequence number, created-at, clock state, suite) travels in clear so
the matcher can route, verify and dedupe before decrypting. It is bound twice: as HPKE
``info`` (a ciphertext cannot be moved under another header) and under the device's Ed25519
signature, which covers everything before it. The plaintext is :mod:`contract.codec`'s padded
columnar encoding; sealing happens in memory, so the gateway's disk only ever holds this
ciphertext, which the gateway itself cannot open.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract import codec
from contract.batch import Batch
from contract.registry import Registry
from core.clock import ClockEpoch
from core.errors import RejectedBatchError, SealError
from core.keyfile import write_private

VERSION = 1
MAGIC = b"BZ"
SUITES = ("x25519-chacha20", "mlkem768x25519-chacha20")
DEFAULT_SUITE = SUITES[0]
DEFAULT_MAX_WIRE = 4 * 1024 * 1024  # the broker's max_packet_size
SIG_LEN = 64
_PREFIX = struct.Struct(">2sBH")
_INFO = b"bzgw/batch/v1\x00"
_X25519_LEN = 32
_MLKEM_SEED_LEN = 64
_MLKEM_PUB_LEN = 1184
_KEY_LENS = {  # (private, public) raw lengths per suite
    "x25519-chacha20": (_X25519_LEN, _X25519_LEN),
    "mlkem768x25519-chacha20": (_MLKEM_SEED_LEN + _X25519_LEN, _MLKEM_PUB_LEN + _X25519_LEN),
}

MatcherPrivateKey = bytes | x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
MatcherPublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey


@dataclass(frozen=True)
class BatchHeader:
    """The clear, signed part of a sealed batch.

    Attributes:
        version: wire format version.
        gateway_id: the sealing gateway (its registry id and certificate CN).
        seq: the outbox sequence number; never reused by a gateway, so the matcher dedupes on
            ``(gateway_id, seq)``.
        created_at: gateway wall-clock time of sealing (epoch seconds).
        clock_synced: whether that clock was synchronised.
        clock_source: what the clock rested on (``ntp``, ``ack``, ``none``, ``replay``).
        clock_uncertainty: error bound of ``created_at`` in seconds (``inf`` if unknown).
        suite: HPKE suite name (one of :data:`SUITES`).
    """

    version: int
    gateway_id: str
    seq: int
    created_at: float
    clock_synced: bool
    clock_source: str
    clock_uncertainty: float
    suite: str

    def to_cbor(self) -> bytes:
        """Canonical CBOR of the header fields after ``version``."""
        return cbor2.dumps({"g": self.gateway_id, "s": self.seq, "t": self.created_at,
                            "cs": self.clock_synced, "cx": self.clock_source,
                            "cu": self.clock_uncertainty, "su": self.suite}, canonical=True)


def _hpke_suite(name: str) -> hpke.Suite:
    kem = hpke.KEM.MLKEM768_X25519 if name == SUITES[1] else hpke.KEM.X25519
    return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def _public_key(raw: bytes, suite: str) -> MatcherPublicKey:
    if suite not in _KEY_LENS:
        raise SealError(f"unknown HPKE suite {suite!r} (known: {', '.join(SUITES)})")
    want = _KEY_LENS[suite][1]
    if len(raw) != want:
        raise SealError(f"matcher public key for {suite} must be {want} bytes, got {len(raw)}")
    if suite == SUITES[0]:
        return x25519.X25519PublicKey.from_public_bytes(raw)
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUB_LEN]),
        x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUB_LEN:]))


@functools.lru_cache(maxsize=8)
def _private_from_raw(raw: bytes, suite: str) -> x25519.X25519PrivateKey | (
        hpke.MLKEM768X25519PrivateKey):
    want = _KEY_LENS[suite][0]
    if len(raw) != want:
        raise SealError(f"matcher private key for {suite} must be {want} bytes, got {len(raw)}")
    if suite == SUITES[0]:
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    return hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED_LEN]),
        x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED_LEN:]))


class Sealer:
    """Seals batches of one gateway for the matcher's public key.

    Args:
        gateway_id: this gateway's registry id.
        matcher_public_key: raw HPKE public key (32 bytes X25519; 1216 bytes ML-KEM-768 ‖
            X25519 for the hybrid suite).
        signing_key: the device's Ed25519 key (its public half is in the registry).
        suite: ``x25519-chacha20`` (default) or ``mlkem768x25519-chacha20``.

    Raises:
        SealError: unknown suite or a key of the wrong size for it.
    """

    def __init__(self, *, gateway_id: str, matcher_public_key: bytes,
                 signing_key: Ed25519PrivateKey, suite: str = DEFAULT_SUITE) -> None:
        self.gateway_id = gateway_id
        self.suite = suite
        self._public = _public_key(bytes(matcher_public_key), suite)
        self._hpke = _hpke_suite(suite)
        self._signing_key = signing_key

    def seal(self, batch: Batch, *, seq: int, created_at: float, clock: ClockEpoch) -> bytes:
        """Encode, encrypt and sign ``batch``; returns the wire bytes.

        Sighting and check-in times are sealed on the 0.1 s grid (as :func:`codec.quantize`);
        everything else round-trips exactly.
        """
        header = BatchHeader(version=VERSION, gateway_id=self.gateway_id, seq=seq,
                             created_at=created_at, clock_synced=clock.synced,
                             clock_source=str(clock.source),
                             clock_uncertainty=clock.uncertainty, suite=self.suite)
        hdr = header.to_cbor()
        prefix = _PREFIX.pack(MAGIC, VERSION, len(hdr)) + hdr
        plaintext = codec.encode_padded(batch, quantize=True)
        ciphertext = self._hpke.encrypt(plaintext, self._public, info=_INFO + prefix)
        signed = prefix + ciphertext
        return signed + self._signing_key.sign(signed)


def _split(wire: bytes) -> tuple[BatchHeader, bytes, bytes, bytes]:
    """``(header, signed part, ciphertext, signature)``; raises ``RejectedBatchError``."""
    if len(wire) < _PREFIX.size + SIG_LEN:
        raise RejectedBatchError("malformed", f"only {len(wire)} bytes")
    magic, version, hlen = _PREFIX.unpack_from(wire)
    if magic != MAGIC:
        raise RejectedBatchError("malformed", "not a sealed batch (bad magic)")
    if version != VERSION:
        raise RejectedBatchError("unsupported_version", f"version {version}, this reads "
                                 f"{VERSION}")
    end = _PREFIX.size + hlen
    if end + SIG_LEN > len(wire):
        raise RejectedBatchError("malformed", "header longer than the batch")
    header = _parse_header(version, wire[_PREFIX.size:end])
    signed = wire[:-SIG_LEN]
    return header, signed, wire[end:-SIG_LEN], wire[-SIG_LEN:]


def _parse_header(version: int, raw: bytes) -> BatchHeader:
    try:
        h = cbor2.loads(raw, max_depth=2, allow_duplicate_keys=False)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as err:
        raise RejectedBatchError("malformed", f"header: {err}") from err
    if type(h) is not dict or set(h) != {"g", "s", "t", "cs", "cx", "cu", "su"}:
        raise RejectedBatchError("malformed", "header fields")
    types: dict[str, tuple[type, ...]] = {"g": (str,), "s": (int,), "t": (float, int),
                                          "cs": (bool,), "cx": (str,), "cu": (float, int),
                                          "su": (str,)}
    for k, ok in types.items():
        if type(h[k]) not in ok:
            raise RejectedBatchError("malformed", f"header field {k}")
    if h["s"] < 0 or len(h["g"]) > 128 or h["su"] not in SUITES:
        raise RejectedBatchError("malformed", "header values")
    return BatchHeader(version=version, gateway_id=h["g"], seq=h["s"],
                       created_at=float(h["t"]), clock_synced=h["cs"], clock_source=h["cx"],
                       clock_uncertainty=float(h["cu"]), suite=h["su"])


def peek_header(wire: bytes) -> BatchHeader:
    """The header of a sealed batch, NOT verified (routing and logging only).

    Raises:
        RejectedBatchError: ``malformed`` or ``unsupported_version``.
    """
    return _split(wire)[0]


@functools.lru_cache(maxsize=4096)
def _verifier(hex_key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))


def _private_for(key: MatcherPrivateKey | Mapping[str, MatcherPrivateKey],
                 suite: str) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
    if isinstance(key, Mapping):
        if suite not in key:
            raise RejectedBatchError("decrypt_failed", f"no matcher key for suite {suite}")
        key = key[suite]
    if isinstance(key, bytes | bytearray | memoryview):
        try:
            return _private_from_raw(bytes(key), suite)
        except SealError as err:
            raise RejectedBatchError("decrypt_failed", str(err)) from err
    if suite == SUITES[0] and isinstance(key, x25519.X25519PrivateKey):
        return key
    if suite == SUITES[1] and isinstance(key, hpke.MLKEM768X25519PrivateKey):
        return key
    raise RejectedBatchError("decrypt_failed", f"matcher key does not fit suite {suite}")


def open_batch(wire: bytes, *, registry: Registry,
               private_key: MatcherPrivateKey | Mapping[str, MatcherPrivateKey],
               max_wire: int = DEFAULT_MAX_WIRE,
               max_plaintext: int = codec.DEFAULT_MAX_PLAINTEXT) -> tuple[BatchHeader, Batch]:
    """Verify, decrypt and decode a sealed batch (matcher side).

    The signature is checked against the gateway's registered key before any decryption or
    decompression work is done for it.

    Args:
        wire: the sealed batch as received.
        registry: the gateway registry (signing keys).
        private_key: the matcher's HPKE private key (raw bytes or key object), or a mapping
            suite name → key when both suites are in use.
        max_wire: larger batches are refused unread.
        max_plaintext: limit on the decompressed plaintext.

    Raises:
        RejectedBatchError: with ``reason`` one of ``oversize``, ``malformed``,
            ``unsupported_version``, ``unknown_gateway``, ``bad_signature``,
            ``decrypt_failed``, ``decompression_bomb``.
    """
    if len(wire) > max_wire:
        raise RejectedBatchError("oversize", f"{len(wire)} bytes > {max_wire}")
    header, signed, ciphertext, signature = _split(bytes(wire))
    entry = registry.gateways.get(header.gateway_id)
    if entry is None:
        raise RejectedBatchError("unknown_gateway", header.gateway_id)
    try:
        _verifier(entry.signing_key).verify(signature, signed)
    except InvalidSignature as err:
        raise RejectedBatchError("bad_signature", header.gateway_id) from err
    key = _private_for(private_key, header.suite)
    prefix = signed[:len(signed) - len(ciphertext)]
    try:
        padded = _hpke_suite(header.suite).decrypt(ciphertext, key, info=_INFO + prefix)
    except InvalidTag as err:  # wrong key, truncated, or ciphertext moved under another header
        raise RejectedBatchError("decrypt_failed", "authentication failed") from err
    except (ValueError, TypeError) as err:
        raise RejectedBatchError("decrypt_failed", str(err)) from err
    try:
        return header, codec.decode_padded(padded, max_plaintext=max_plaintext)
    except codec.DecompressionBombError as err:
        raise RejectedBatchError("decompression_bomb", str(err)) from err
    except codec.CodecError as err:
        raise RejectedBatchError("malformed", str(err)) from err


# ---------------------------------------------------------------- key files


def generate_matcher_keypair(suite: str = DEFAULT_SUITE) -> tuple[bytes, bytes]:
    """A new matcher HPKE key pair as raw ``(private, public)`` bytes.

    X25519: 32 + 32 bytes. Hybrid: private = ML-KEM-768 seed (64) ‖ X25519 (32), public =
    ML-KEM-768 (1184) ‖ X25519 (32).
    """
    if suite not in _KEY_LENS:
        raise SealError(f"unknown HPKE suite {suite!r} (known: {', '.join(SUITES)})")
    xk = x25519.X25519PrivateKey.generate()
    x_priv, x_pub = xk.private_bytes_raw(), xk.public_key().public_bytes_raw()
    if suite == SUITES[0]:
        return x_priv, x_pub
    mk = mlkem.MLKEM768PrivateKey.generate()
    return mk.private_bytes_raw() + x_priv, mk.public_key().public_bytes_raw() + x_pub


def _read_key(path: Path, lengths: tuple[int, ...], what: str, private: bool) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise SealError(f"{p}: cannot read the {what}: {err.strerror}") from err
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            k: Any = (serialization.load_pem_private_key(data, password=None) if private
                      else serialization.load_pem_public_key(data))
        except (ValueError, TypeError) as err:
            raise SealError(f"{p}: not a usable PEM {what}: {err}") from err
        if isinstance(k, x25519.X25519PrivateKey):
            return k.private_bytes_raw()
        if isinstance(k, x25519.X25519PublicKey):
            return k.public_bytes_raw()
        raise SealError(f"{p}: PEM {what} must be X25519, got {type(k).__name__}")
    if len(data) not in lengths:
        try:  # also accept hex text
            data = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) not in lengths:
        raise SealError(f"{p}: {what} must be raw, hex or PEM of {' or '.join(map(str, lengths))}"
                        f" bytes, got {len(data)}")
    return data


def load_matcher_public_key(path: Path) -> bytes:
    """Raw matcher public key from a raw, hex or PEM (X25519) file."""
    return _read_key(path, tuple(v[1] for v in _KEY_LENS.values()), "matcher public key", False)


def load_matcher_private_key(path: Path) -> bytes:
    """Raw matcher private key from a raw, hex or PEM (X25519) file."""
    return _read_key(path, tuple(v[0] for v in _KEY_LENS.values()), "matcher private key", True)


def save_matcher_keypair(private: bytes, public: bytes, private_path: Path,
                         public_path: Path) -> None:
    """Write raw key files (private 0600)."""
    write_private(private_path, private)
    Path(public_path).parent.mkdir(parents=True, exist_ok=True)
    Path(public_path).write_bytes(public)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The device's Ed25519 signing key from a PEM (PKCS#8) file.

    Raises:
        SealError: unreadable, not PEM, or not Ed25519.
    """
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except OSError as err:
        raise SealError(f"{p}: cannot read the signing key: {err.strerror}") from err
    except (ValueError, TypeError) as err:
        raise SealError(f"{p}: not a PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise SealError(f"{p}: signing key must be Ed25519, got {type(key).__name__}")
    return key


def save_signing_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write the device key as unencrypted PKCS#8 PEM, mode 0600."""
    write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def signing_public_hex(key: Ed25519PrivateKey) -> str:
    """The registry form (64 hex digits) of a device key's public half."""
    return key.public_key().public_bytes_raw().hex()
