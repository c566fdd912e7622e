"""Frames in, check-ins out: decode, recognise, de-duplicate, hand on, tell staff.

A code held in front of the camera is seen in many frames, and people show their code twice:
the same code (by a keyed hash of its bytes, the key random per process) is one check-in for
``cooldown_s``, and a code that never left the view is one presentation however long it stays.
Each accepted check-in goes to the sink at once (the daemon seals it there and then). Only the
masked form of an identity is ever logged, shown or put in an event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from contract.records import CheckInKind
from core.clock import Clock
from qr.decoder import Decoder, DecodeResult
from qr.recognizers import Recognizer
from qr.records import DecodedCode, FeedbackState, Rejected, ScannedCheckIn

log = logging.getLogger(__name__)


class FeedbackSink(Protocol):
    """What the pipeline tells staff through (``gateway.feedback.Feedback`` is one)."""

    def signal(self, state: FeedbackState, masked: str = "", *, ts: float | None = None,
               detail: str = "") -> None:
        """Signal one event."""
        ...


@dataclass(frozen=True, slots=True)
class CheckInEvent:
    """What happened to one code (or one unreadable symbol) in one frame.

    Attributes:
        ts: frame time.
        state: ``accepted``, ``already checked in``, ``unreadable`` or ``not saved``.
        kind: what the code was, when known.
        masked: masked identity (empty for refused codes).
        reason: why a code was refused.
        signalled: whether staff were told (repeats of one presentation are silent).
    """

    ts: float
    state: FeedbackState
    kind: CheckInKind | None = None
    masked: str = ""
    reason: str = ""
    signalled: bool = True


@dataclass
class CheckInStats:
    """Counters for health, metrics and the bench."""

    frames: int = 0
    codes: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    undecodable: int = 0
    evicted: int = 0  # cooldown entries dropped early to stay bounded
    not_saved: int = 0  # accepted codes the sink could not store (staff told "not saved")
    by_kind: dict[str, int] = field(default_factory=dict)
    decode_ms_total: float = 0.0


@dataclass(slots=True)
class _Seen:
    accepted_at: float
    last_seen: float


class Cooldown:
    """Bounded memory of recently seen codes, keyed by a keyed hash (never the payload).

    Args:
        cooldown_s: a code seen again within this is the same check-in.
        repeat_s: a code unseen for this long and then shown again is a new presentation.
        max_entries: bound; the oldest entries are evicted first (and counted).
    """

    def __init__(self, cooldown_s: float, *, repeat_s: float = 3.0,
                 max_entries: int = 4096) -> None:
        self.cooldown_s = cooldown_s
        self.repeat_s = repeat_s
        self.max_entries = max_entries
        self._key = os.urandom(16)
        self._seen: OrderedDict[bytes, _Seen] = OrderedDict()
        self.evicted = 0

    def key(self, raw: bytes) -> bytes:
        """The per-process keyed hash a code is remembered by."""
        return hmac.new(self._key, raw, hashlib.sha256).digest()[:16]

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            first = next(iter(self._seen.values()))
            if (now - first.accepted_at < self.cooldown_s
                    or now - first.last_seen < self.repeat_s):
                break
            self._seen.popitem(last=False)

    def observe(self, raw: bytes, now: float) -> tuple[bool, bool]:
        """Note a sighting of a code at monotonic time ``now``.

        Returns:
            ``(new, represented)``: ``new`` when it is a new check-in; ``represented`` when
            it is a known code shown again after leaving the view.
        """
        self._expire(now)
        k = self.key(raw)
        seen = self._seen.get(k)
        if seen is not None:
            gap = now - seen.last_seen
            seen.last_seen = max(seen.last_seen, now)
            if now - seen.accepted_at < self.cooldown_s or gap < self.repeat_s:
                return False, gap >= self.repeat_s
            del self._seen[k]
        self._seen[k] = _Seen(accepted_at=now, last_seen=now)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            self.evicted += 1
        return True, False

    def forget(self, raw: bytes) -> None:
        """Drop a code (its check-in could not be handed on, so it may be retried)."""
        self._seen.pop(self.key(raw), None)


class CheckInPipeline:
    """Decode → recognise → de-duplicate → sink, with staff feedback.

    Args:
        recognizer: payload → check-in.
        sink: called with each accepted check-in, at once (e.g. ``CapturePipeline.on_checkin``).
        decoder: frame → codes (by default a :class:`~qr.decoder.Decoder` for a camera
            stream, which does not retry an unchanged scene).
        cooldown_s: the same code within this is one check-in.
        feedback: where staff signals go (optional).
        repeat_s: gap after which a code shown again counts as shown again (for the "already
            checked in" and "unreadable" signals, and for accepting it after the cooldown).
        max_tracked: bound on remembered codes.
    """

    def __init__(self, *, recognizer: Recognizer, sink: Callable[[ScannedCheckIn], object],
                 decoder: Decoder | None = None, cooldown_s: float = 300.0,
                 feedback: FeedbackSink | None = None, repeat_s: float = 3.0,
                 max_tracked: int = 4096) -> None:
        self.recognizer = recognizer
        self.sink = sink
        self.decoder = decoder if decoder is not None else Decoder(skip_static=True)
        self.feedback = feedback
        self.cooldown = Cooldown(cooldown_s, repeat_s=repeat_s, max_entries=max_tracked)
        self.refused = Cooldown(0.0, repeat_s=repeat_s, max_entries=256)
        self.repeat_s = repeat_s
        self.stats = CheckInStats()
        self._last_unreadable: float | None = None

    @classmethod
    def from_config(cls, cfg: Any, *, sink: Callable[[ScannedCheckIn], object],
                    feedback: FeedbackSink | None = None) -> CheckInPipeline:
        """From a ``QrConfig``: its keys, trust list, budget and cooldown.

        Raises:
            ConfigError: a key or trust-list file named by the config is unusable.
        """
        return cls(recognizer=Recognizer.from_config(cfg), sink=sink,
                   decoder=Decoder(budget_ms=cfg.frame_budget_ms, zbar=cfg.zbar,
                                   skip_static=True),
                   cooldown_s=cfg.cooldown_s, feedback=feedback)

    def process_frame(self, frame: np.ndarray, ts: float | None, clock: Clock,
                      ) -> list[CheckInEvent]:
        """Decode one frame and handle what it holds (blocking; see :meth:`run`).

        Args:
            frame: 2-D uint8 grayscale image.
            ts: the frame's wall time in ``clock`` (``clock.now()`` when ``None``).
            clock: the time base check-ins are stamped in.
        """
        return self.handle(self.decoder.decode(frame), ts, clock)

    def handle(self, result: DecodeResult, ts: float | None, clock: Clock,
               ) -> list[CheckInEvent]:
        """Recognise and de-duplicate the codes of one decoded frame."""
        ts = clock.now() if ts is None else ts
        epoch = clock.epoch()
        mono = epoch.mono(ts)
        self.stats.frames += 1
        self.stats.decode_ms_total += result.elapsed_ms
        events = [self._one(code, ts, mono, clock) for code in result.codes]
        if result.undecodable and not result.codes:
            self.stats.undecodable += result.undecodable
            loud = (self._last_unreadable is None
                    or mono - self._last_unreadable >= self.repeat_s)
            self._last_unreadable = mono
            events.append(self._tell(CheckInEvent(
                ts=ts, state=FeedbackState.UNREADABLE, reason="code seen but not readable",
                signalled=loud)))
        self.stats.evicted = self.cooldown.evicted
        return events

    def process_codes(self, codes: Iterable[DecodedCode], ts: float | None, clock: Clock,
                      ) -> list[CheckInEvent]:
        """Handle codes decoded elsewhere (tests, the CLI)."""
        return self.handle(DecodeResult(codes=list(codes)), ts, clock)

    def _one(self, code: DecodedCode, ts: float, mono: float, clock: Clock) -> CheckInEvent:
        self.stats.codes += 1
        new, shown_again = self.cooldown.observe(code.raw, mono)
        if not new:
            # Known code: skip recognition (and its signature checks) entirely.
            self.stats.duplicates += 1
            return self._tell(CheckInEvent(ts=ts, state=FeedbackState.ALREADY,
                                           signalled=shown_again))
        got = self.recognizer.recognize(code, ts=ts, clock=clock.epoch())
        if isinstance(got, Rejected):
            self.cooldown.forget(code.raw)
            fresh, again = self.refused.observe(code.raw, mono)
            self.stats.rejected += 1
            log.info("code refused (%s): %s", got.kind or "unknown", got.reason)
            return self._tell(CheckInEvent(ts=ts, state=FeedbackState.UNREADABLE,
                                           kind=got.kind, reason=got.reason,
                                           signalled=fresh or again))
        try:
            self.sink(got)
        except Exception as err:  # noqa: BLE001 - any failure to take it must reach staff
            # The check-in was not taken: forget it so the next frame retries it, and tell
            # staff at once that it was NOT saved (never "accepted"; a silent loss is worse).
            self.cooldown.forget(code.raw)
            self.stats.not_saved += 1
            log.error("check-in not saved (%s): %s", got.kind.value, err)
            return self._tell(CheckInEvent(ts=ts, state=FeedbackState.NOT_SAVED,
                                           kind=got.kind, masked=got.masked,
                                           reason="not saved: " + str(err)[:80]))
        self.stats.accepted += 1
        self.stats.by_kind[got.kind.value] = self.stats.by_kind.get(got.kind.value, 0) + 1
        log.info("check-in accepted (%s): %s", got.kind.value, got.masked)
        return self._tell(CheckInEvent(ts=ts, state=FeedbackState.ACCEPTED, kind=got.kind,
                                       masked=got.masked))

    def _tell(self, event: CheckInEvent) -> CheckInEvent:
        if event.signalled and self.feedback is not None:
            self.feedback.signal(event.state, event.masked, ts=event.ts, detail=event.reason)
        return event

    async def run(self, frames: Any, clock: Clock) -> None:
        """Consume a frame source until it ends; decoding runs in a worker thread.

        The sink and feedback run in a worker thread, one frame at a time, so a sink may block
        until its check-in is stored and must be thread-safe.

        Args:
            frames: a :class:`~qr.sources.FrameSource` (or any async iterable of frames
                with ``image`` and ``ts``).
            clock: the time base.
        """
        unregister = None
        if self.feedback is not None and hasattr(frames, "on_status"):
            unregister = frames.on_status(self._camera_status)
        stream = aiter(frames)
        try:
            async for frame in stream:
                # Decoding and the sink (which seals and commits a check-in) both run in a
                # worker thread: neither may stall the loop that receives BLE adverts.
                await asyncio.to_thread(self.process_frame, frame.image, frame.ts, clock)
        finally:
            # Leaving the loop by an exception does not close an async generator: close it
            # now so the camera is released at once, not whenever it is collected.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            if unregister is not None:
                unregister()

    def _camera_status(self, status: Any) -> None:
        if self.feedback is None:
            return
        if status.state == "camera fault":
            self.feedback.signal(FeedbackState.CAMERA_FAULT, detail=status.detail)
        elif status.state == "ok" and status.faults:
            self.feedback.signal(FeedbackState.CAMERA_OK)
