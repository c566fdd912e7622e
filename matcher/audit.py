"""The matcher's audit log: every F0 query, approval, opening, login and user change.

One JSON object per line::

    {"seq": 7, "ts": 1765000000.123, "event": "open", "actor": "match",
     "data": {...}, "prev": "<SHA-256 of line 6>", "sig": "<Ed25519 over the line without sig>"}

- a changed entry breaks its signature (and the next entry's ``prev``);
- a removed or reordered entry breaks ``seq`` and the ``prev`` chain;
- a removed *last* entry is caught by the head file beside the log (``LOG.head``: the last
  ``seq`` and hash, signed), rewritten after every append.

The signing key lives on the matcher, so the log proves integrity against everyone without
that key (a copied backup, a database administrator, a tampered file); against the matcher's
own root, heads must be kept elsewhere too: every custodian approval records the head it saw
(``bzgw custodian approve``), so a rewritten history disagrees with the approvals on file.
Entries never hold an identity in the clear: callers pass counts, case ids and digests.

Appends are serialised by a lock and an ``flock`` on the log (several matcher processes may
share one log on one host); each append is fsynced before the head is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.canonical import canonical_json
from core.errors import BzgwError
from core.keyfile import write_private

GENESIS = "0" * 64
EVENTS = frozenset({
    "start", "f0_query", "lookup", "approval", "open", "refused_open", "login", "login_failed",
    "logout", "user_add", "user_disable", "user_passwd", "report",
})


class AuditError(BzgwError):
    """The audit log does not verify, or cannot be written.

    Attributes:
        problems: one ``LOG:line: what is wrong`` each.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("audit log does not verify: " + "; ".join(problems[:5])
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def generate_audit_key(path: Path) -> Ed25519PublicKey:
    """Create the audit signing key (0600) and its public half beside it (``.pub``, hex)."""
    key = Ed25519PrivateKey.generate()
    write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pub = key.public_key()
    path.with_suffix(".pub").write_text(pub.public_bytes_raw().hex() + "\n")
    return pub


def load_audit_key(path: Path, *, create: bool = False) -> Ed25519PrivateKey:
    """The audit signing key; with ``create``, made when missing (first start)."""
    if not path.exists():
        if not create:
            raise AuditError([f"{path}: no audit signing key"])
        generate_audit_key(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError([f"{path}: not an Ed25519 private key"])
    return key


def load_audit_public(path: Path) -> Ed25519PublicKey:
    """A public key as 64 hex characters (``audit.pub``)."""
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(path.read_text().strip()))
    except (OSError, ValueError) as err:
        raise AuditError([f"{path}: not an audit public key ({err})"]) from err


@dataclass(frozen=True, slots=True)
class Head:
    """The last entry of a log: its ``seq`` and line hash."""

    seq: int
    hash: str


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        yield from enumerate(f, 1)


def verify(path: Path, public: Ed25519PublicKey) -> tuple[Head, list[str]]:
    """Check every entry, the chain and the head file.

    Returns:
        ``(head, problems)``: the last good entry and every problem found (empty: verified).
    """
    problems: list[str] = []
    prev, seq = GENESIS, 0
    if not path.exists():
        head_file = path.with_name(path.name + ".head")
        if head_file.exists():
            problems.append(f"{path}: missing, but its head file says entries were written")
        return Head(0, GENESIS), problems
    for n, raw in _iter_lines(path):
        where = f"{path}:{n}"
        if not raw.endswith(b"\n"):
            problems.append(f"{where}: truncated entry (no end of line)")
            break
        try:
            entry = json.loads(raw)
            sig = bytes.fromhex(entry.pop("sig"))
        except (ValueError, KeyError, AttributeError, TypeError) as err:
            problems.append(f"{where}: not an audit entry ({err.__class__.__name__})")
            break
        try:
            public.verify(sig, canonical_json(entry))
        except (InvalidSignature, ValueError):
            problems.append(f"{where}: signature does not match (entry changed)")
        if entry.get("seq") != seq + 1:
            problems.append(f"{where}: seq {entry.get('seq')} after {seq} (entry removed or "
                            f"reordered)")
        if entry.get("prev") != prev:
            problems.append(f"{where}: does not chain to the entry before it")
        seq = entry["seq"] if isinstance(entry.get("seq"), int) else seq + 1
        prev = _line_hash(raw)
    head = Head(seq, prev)
    problems += _check_head(path, public, head)
    return head, problems


def _check_head(path: Path, public: Ed25519PublicKey, head: Head) -> list[str]:
    hf = path.with_name(path.name + ".head")
    if not hf.exists():
        return [] if head.seq == 0 else [f"{hf}: missing (cannot tell whether the last "
                                         f"entries were removed)"]
    try:
        doc = json.loads(hf.read_text())
        sig = bytes.fromhex(doc.pop("sig"))
        public.verify(sig, canonical_json(doc))
    except (ValueError, KeyError, AttributeError, TypeError, InvalidSignature):
        return [f"{hf}: head file does not verify"]
    if (doc.get("seq"), doc.get("hash")) != (head.seq, head.hash):
        return [f"{hf}: the log ends at entry {head.seq} but the head says "
                f"{doc.get('seq')} (entries removed or the log replaced)"]
    return []


class AuditLog:
    """An open, verified audit log that entries are appended to.

    Args:
        path: the log file (created on first append).
        key: the Ed25519 signing key.

    Raises:
        AuditError: the existing log does not verify (the matcher refuses to start).
    """

    def __init__(self, path: Path, key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self._key = key
        self.public = key.public_key()
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        head, problems = verify(self.path, self.public)
        if problems and self._finish_interrupted_append():
            head, problems = verify(self.path, self.public)
        if problems:
            raise AuditError(problems)
        self.head = head

    def _finish_interrupted_append(self) -> bool:
        """Complete an append that a crash (kill -9, power cut) interrupted, and only that.

        An append writes the line, fsyncs, then replaces the head. Cut before the fsync, the
        log may end in a partial line after the entry the head names: that line was never
        acknowledged and is cut off. Cut after it, the log holds one whole, validly signed
        entry past the head: the head is moved to it. Anything else is left for ``verify`` to
        report, and the matcher does not start.
        """
        hf = self.path.with_name(self.path.name + ".head")
        if not self.path.exists():
            return False
        data = self.path.read_bytes()
        try:
            doc: dict[str, Any] = (json.loads(hf.read_text()) if hf.exists()
                                   else {"seq": 0, "hash": GENESIS})
            sig = doc.pop("sig", None)
            if sig is not None:
                self.public.verify(bytes.fromhex(sig), canonical_json(doc))
            head = Head(int(doc["seq"]), str(doc["hash"]))
        except (OSError, ValueError, KeyError, TypeError, InvalidSignature):
            return False
        whole = data[:data.rfind(b"\n") + 1]
        lines = whole.splitlines(keepends=True)
        prefix_ok = head.seq == 0 or (len(lines) >= head.seq
                                      and _line_hash(lines[head.seq - 1]) == head.hash)
        if not prefix_ok or len(lines) > head.seq + 1:
            return False
        if len(whole) < len(data):  # a partial line after the last whole one
            with self.path.open("r+b") as f:
                f.truncate(len(whole))
                f.flush()
                os.fsync(f.fileno())
        if len(lines) == head.seq + 1:  # written and synced, head not yet moved
            try:
                entry = json.loads(lines[-1])
                self.public.verify(bytes.fromhex(entry.pop("sig")), canonical_json(entry))
            except (ValueError, KeyError, AttributeError, TypeError, InvalidSignature):
                return False
            if entry.get("seq") != head.seq + 1 or entry.get("prev") != head.hash:
                return False
            self._write_head(Head(head.seq + 1, _line_hash(lines[-1])))
        return True

    @classmethod
    def open(cls, path: Path, key_path: Path) -> AuditLog:
        """Open (and verify) the log, creating the signing key on first use."""
        return cls(path, load_audit_key(key_path, create=True))

    def append(self, event: str, *, actor: str, **data: Any) -> Head:
        """Append one signed, chained entry and move the head; returns the new head."""
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        with self._lock, self._locked_file() as f:
            head = self._tail(f)
            entry: dict[str, Any] = {"seq": head.seq + 1, "ts": round(time.time(), 3),
                                     "event": event, "actor": actor, "data": data,
                                     "prev": head.hash}
            body = canonical_json(entry)
            signed = dict(entry, sig=self._key.sign(body).hex())
            line = canonical_json(signed) + b"\n"
            f.seek(0, os.SEEK_END)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self.head = Head(head.seq + 1, _line_hash(line))
            self._write_head(self.head)
            return self.head

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[Any]:
        with self.path.open("a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _tail(self, f: Any) -> Head:
        # Another process may have appended since we last looked: read the real last line.
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return Head(0, GENESIS)
        back = min(size, 65536)
        f.seek(size - back)
        last = f.read(back).rstrip(b"\n").rsplit(b"\n", 1)[-1]
        entry = json.loads(last)
        return Head(int(entry["seq"]), _line_hash(last))

    def _write_head(self, head: Head) -> None:
        doc = {"seq": head.seq, "hash": head.hash}
        doc["sig"] = self._key.sign(canonical_json(doc)).hex()
        hf = self.path.with_name(self.path.name + ".head")
        tmp = hf.with_name(hf.name + ".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(doc) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, hf)


def entries(path: Path) -> list[dict[str, Any]]:
    """Every entry of a log, as written (for ``bzgw audit show`` and tests)."""
    return [json.loads(raw) for _, raw in _iter_lines(path)] if path.exists() else []
