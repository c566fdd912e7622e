"""Ingest one sealed batch: check, verify, open, dedupe, store; decide the ack.

Order of checks (each refusal is counted in the store under its reason and the topic's
gateway id):

1. the topic is a ``bz/v1/{p}/{v}/{g}/batch`` topic;
2. ``oversize``: larger than the limit, refused unread;
3. ``unknown_gateway`` / ``topic_mismatch``: ``g`` is not registered, or not at ``p/v``;
4. :func:`contract.sealing.open_batch`: the Ed25519 signature is verified against the registry
   before any decryption or decompression (``bad_signature``, ``decrypt_failed``,
   ``malformed``, ``unsupported_version``, ``decompression_bomb``);
5. ``gateway_mismatch``: the signed header names another gateway than the topic;
6. ``seq_out_of_window``: a sequence number implausibly far ahead of the gateway's last;
7. the store: ``stored``, ``duplicate`` (same bytes again: acked, stored once) or ``replay``
   (a sequence number reused with other content, or one already purged).

Acks: ``stored`` and ``duplicate`` always. ``rejected`` only for faults of the batch itself
(oversize, malformed, unsupported version, decompression bomb, replay, out-of-window), so the
gateway drops it; never for configuration or authentication problems (unknown gateway,
topic mismatch, bad signature, undecryptable): those batches stay in the gateway's outbox
until an operator fixes the registry or keys, and nothing unauthenticated can make a gateway
delete data. The broker's ACL is what makes the topic's gateway id trustworthy enough to
address the ack to.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from contract import codec
from contract.ack import ack_payload
from contract.batch import Batch
from contract.registry import GatewayEntry, Registry
from contract.sealing import (
    DEFAULT_MAX_WIRE,
    BatchHeader,
    MatcherPrivateKey,
    open_batch,
    peek_header,
)
from core.errors import RejectedBatchError
from matcher.store import Store
from mqtt import topics

log = logging.getLogger(__name__)

Status = Literal["stored", "duplicate", "rejected", "ignored"]
ACKED_REJECTIONS = frozenset({"oversize", "malformed", "unsupported_version",
                              "decompression_bomb", "replay", "seq_out_of_window"})
DEFAULT_MAX_SEQ_AHEAD = 1_000_000


@dataclass(frozen=True)
class Outcome:
    """What happened to one message, and the ack to send (if any)."""

    status: Status
    gateway_id: str
    seq: int | None = None
    reason: str | None = None
    ack_topic: str | None = None

    def ack(self, matcher_time: float | None = None) -> bytes:
        """The ack message (:mod:`contract.ack`); only outcomes that name a batch have one."""
        if self.seq is None:
            raise ValueError("no sequence number to acknowledge")
        return ack_payload(self.seq, self.status, reason=self.reason, matcher_time=matcher_time)


@dataclass(frozen=True)
class Opened:
    """One batch message after :meth:`Ingestor.open`: opened records, or why not."""

    topic: str
    gateway_id: str  # from the topic (not trusted beyond the broker's ACL)
    ack_topic: str
    payload: bytes
    entry: GatewayEntry | None = None
    header: BatchHeader | None = None
    batch: Batch | None = None
    reason: str | None = None  # a rejection reason; None when opened
    detail: str = ""


class Ingestor:
    """Turns batch messages into stored records and ack decisions (no I/O but the store)."""

    def __init__(self, store: Store, registry: Registry,
                 private_key: MatcherPrivateKey | Mapping[str, MatcherPrivateKey], *,
                 max_wire: int = DEFAULT_MAX_WIRE,
                 max_plaintext: int = codec.DEFAULT_MAX_PLAINTEXT,
                 max_seq_ahead: int = DEFAULT_MAX_SEQ_AHEAD) -> None:
        self.store = store
        self.registry = registry
        self.private_key = private_key
        self.max_wire = max_wire
        self.max_plaintext = max_plaintext
        self.max_seq_ahead = max_seq_ahead

    def handle_batch(self, topic: str, payload: bytes, *,
                     now: float | None = None) -> Outcome:
        """Process one message from the batch subscription (:meth:`open`, then
        :meth:`store_opened`)."""
        return self.store_opened(self.open(topic, payload), now=now)

    def open(self, topic: str, payload: bytes) -> Opened:
        """Steps 1–5: check the topic and size, verify and open; touches no database.

        Safe to run on another thread than the store's, so a service can open the next
        batches while the store writes the previous ones.
        """
        parts = topics.parse(topic)
        if parts is None or parts[3] != "batch":
            return Opened(topic, "", "", payload, reason="bad_topic")
        province, venue, gw, _ = parts
        ack_topic = topics.ack(province, venue, gw)
        if len(payload) > self.max_wire:
            return Opened(topic, gw, ack_topic, payload, reason="oversize",
                          detail=f"{len(payload)} bytes > {self.max_wire}")
        entry = self.registry.gateways.get(gw)
        if entry is None:
            return Opened(topic, gw, ack_topic, payload, reason="unknown_gateway")
        if (entry.province, entry.venue) != (province, venue):
            return Opened(topic, gw, ack_topic, payload, reason="topic_mismatch",
                          detail=f"registered at {entry.province}/{entry.venue}")
        try:
            header, batch = open_batch(payload, registry=self.registry,
                                       private_key=self.private_key, max_wire=self.max_wire,
                                       max_plaintext=self.max_plaintext)
        except RejectedBatchError as err:
            return Opened(topic, gw, ack_topic, payload, reason=err.reason, detail=err.detail)
        if header.gateway_id != gw:
            return Opened(topic, gw, ack_topic, payload, reason="gateway_mismatch",
                          detail=f"header names {header.gateway_id}")
        return Opened(topic, gw, ack_topic, payload, entry=entry, header=header, batch=batch)

    def store_group(self, batches: list[Opened], *, now: float | None = None) -> list[Outcome]:
        """Store several opened batches in one transaction (one commit); their outcomes.

        Sorted by topic (province, venue, gateway) and sequence number first: every matcher
        process then locks gateway rows in the same order, so concurrent groups on
        PostgreSQL wait for each other instead of deadlocking.
        """
        ordered = sorted(batches, key=lambda b: (b.topic, b.header.seq if b.header else 0))
        with self.store.transaction():
            return [self.store_opened(b, now=now) for b in ordered]

    def store_opened(self, op: Opened, *, now: float | None = None) -> Outcome:
        """Steps 6–7 for an :meth:`open` result: count, check the window, store; the ack."""
        if op.reason == "bad_topic":
            self.store.count("bad_topic", "")
            return Outcome("ignored", "", reason="bad_topic")
        if op.reason is not None or op.entry is None or op.header is None or op.batch is None:
            return self._reject(op.gateway_id, op.reason or "malformed", op.payload,
                                op.ack_topic, op.detail)
        gw, header, batch = op.gateway_id, op.header, op.batch
        last = self._last_seq(gw)
        if last and header.seq > last + self.max_seq_ahead:
            return self._reject(gw, "seq_out_of_window", op.payload, op.ack_topic,
                                f"seq {header.seq} after {last}")
        verdict = self.store.add_batch(op.entry, header, batch,
                                       digest=hashlib.sha256(op.payload).digest(),
                                       size=len(op.payload), received_at=now)
        if verdict == "replay":
            return self._reject(gw, "replay", op.payload, op.ack_topic, f"seq {header.seq}")
        self.store.count(verdict, gw)
        log.info("batch %s/%d %s (%d sightings, %d check-ins)", gw, header.seq, verdict,
                 len(batch.sightings), len(batch.checkins))
        return Outcome(verdict, gw, header.seq, None, op.ack_topic)

    def _last_seq(self, gw: str) -> int:
        v = self.store.db.scalar("SELECT last_seq FROM gateways WHERE gateway_id = ?", (gw,))
        return int(v) if v is not None else 0

    def _reject(self, gw: str, reason: str, payload: bytes, ack_topic: str,
                detail: str = "") -> Outcome:
        self.store.count(reason, gw)
        seq = None
        if reason in ACKED_REJECTIONS:
            try:
                header = peek_header(payload)
            except RejectedBatchError:
                header = None
            if header is not None and header.gateway_id == gw:
                seq = header.seq
        log.warning("batch from %s rejected: %s%s", gw[:64], reason,
                    f" ({detail})" if detail else "")
        if seq is None:
            return Outcome("rejected", gw, None, reason, None)
        return Outcome("rejected", gw, seq, reason, ack_topic)
