"""Staff feedback: an LED and a buzzer at the door, and the recent events the status page shows.

Four things staff need to tell apart without reading a screen: a check-in was **accepted**
(one long light, one beep), the code was **already checked in** (two short blinks and beeps),
the code was **unreadable** or refused (three fast blinks, one long buzz), and the **camera
fault** (slow blinking until the camera is back). A check-in the gateway could not store
(outbox full) is **not saved** (six fast blinks, two long buzzes), never "accepted". The
pins are driven through gpiozero; where no GPIO exists (a laptop, CI, a container) feedback
quietly becomes events only.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qr.records import FeedbackState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One signal: LED and buzzer as ``(on_s, off_s, n)``; ``n=None`` repeats until changed."""

    led: tuple[float, float, int | None] | None
    buzzer: tuple[float, float, int | None] | None


PATTERNS: dict[FeedbackState, Pattern] = {
    FeedbackState.ACCEPTED: Pattern(led=(1.0, 0.0, 1), buzzer=(0.1, 0.0, 1)),
    FeedbackState.ALREADY: Pattern(led=(0.15, 0.15, 2), buzzer=(0.05, 0.1, 2)),
    FeedbackState.UNREADABLE: Pattern(led=(0.1, 0.1, 3), buzzer=(0.4, 0.0, 1)),
    FeedbackState.CAMERA_FAULT: Pattern(led=(0.5, 1.5, None), buzzer=(0.2, 0.2, 3)),
    FeedbackState.CAMERA_OK: Pattern(led=None, buzzer=None),
    FeedbackState.NOT_SAVED: Pattern(led=(0.1, 0.1, 6), buzzer=(0.4, 0.2, 2)),
}


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """One thing staff were told; ``masked`` is the only person-related text ever kept."""

    ts: float
    state: FeedbackState
    masked: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the status page."""
        return {"ts": self.ts, "state": self.state.value, "masked": self.masked,
                "detail": self.detail}


class FeedbackEvents:
    """Bounded, thread-safe list of recent events (in memory only).

    Args:
        maxlen: how many events are kept; older ones are dropped and counted.
    """

    def __init__(self, maxlen: int = 200) -> None:
        self._events: deque[FeedbackEvent] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.dropped = 0
        self.total = 0

    def add(self, event: FeedbackEvent) -> None:
        """Record an event."""
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)
            self.total += 1

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        """The newest ``n`` events, newest first, as dicts with ts, state, masked, detail."""
        with self._lock:
            items = list(self._events)[-n:] if n > 0 else []
        return [e.as_dict() for e in reversed(items)]


class Feedback:
    """Drives the LED and buzzer and records every signal.

    Args:
        led_pin: gpiozero pin name or number for the LED (``None``: no LED).
        buzzer_pin: pin for an active buzzer (``None``: no buzzer).
        enabled: drive the pins at all (events are recorded either way).
        pin_factory: gpiozero pin factory; default is gpiozero's own choice for this board.
        events: where events go (a new bounded list by default).
        background: run blink patterns in gpiozero's background threads (off in tests that
            want to assert finished pin sequences).
        clock: wall time for events without an explicit ``ts``.
        time_scale: multiplies every on/off time (tests play patterns faster).

    Attributes:
        available: whether at least one pin is being driven.
        problem: why GPIO is not in use, when it is not.
    """

    def __init__(self, *, led_pin: str | int | None = "GPIO17",
                 buzzer_pin: str | int | None = "GPIO27", enabled: bool = True,
                 pin_factory: Any = None, events: FeedbackEvents | None = None,
                 background: bool = True, clock: Callable[[], float] = time.time,
                 time_scale: float = 1.0) -> None:
        self.events = events if events is not None else FeedbackEvents()
        self.background = background
        self._clock = clock
        self.time_scale = time_scale
        self._led: Any = None
        self._buzzer: Any = None
        self.problem = "" if enabled else "disabled in config"
        if enabled:
            self._led = self._device("LED", led_pin, pin_factory)
            self._buzzer = self._device("Buzzer", buzzer_pin, pin_factory)
        self.available = self._led is not None or self._buzzer is not None
        self.camera_fault = False

    def _device(self, cls_name: str, pin: str | int | None, factory: Any) -> Any:
        if pin is None:
            return None
        try:
            import gpiozero
            from gpiozero.exc import GPIOZeroError
        except ImportError as err:
            self.problem = f"gpiozero not installed: {err}"
            return None
        try:
            # gpiozero warns once per pin library it fails to load before giving up; on a
            # board without GPIO that is expected, not a warning for the operator.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return getattr(gpiozero, cls_name)(pin, pin_factory=factory)
        except (GPIOZeroError, OSError, RuntimeError, ImportError, ValueError) as err:
            self.problem = f"no GPIO for the {cls_name.lower()} ({pin}): {err}"
            log.info("staff feedback without %s: %s", cls_name.lower(), err)
            return None

    @classmethod
    def from_config(cls, cfg: Any, **kwargs: Any) -> Feedback:
        """From a ``QrConfig`` (``feedback``, ``led_pin``, ``buzzer_pin``)."""
        kwargs.setdefault("enabled", cfg.feedback)  # the daemon turns it off without a camera
        return cls(led_pin=cfg.led_pin, buzzer_pin=cfg.buzzer_pin, **kwargs)

    def signal(self, state: FeedbackState, masked: str = "", *, ts: float | None = None,
               detail: str = "") -> None:
        """Tell staff something: drive the pins and record the event.

        Args:
            state: what happened.
            masked: the masked identity (never the identity itself).
            ts: when; the feedback clock when omitted.
            detail: a short reason (e.g. why a code was refused), never payload text.
        """
        event = FeedbackEvent(ts=self._clock() if ts is None else ts, state=state,
                              masked=masked, detail=detail)
        self.events.add(event)
        if state is FeedbackState.CAMERA_FAULT:
            self.camera_fault = True
        elif state is FeedbackState.CAMERA_OK:
            self.camera_fault = False
        log.info("feedback: %s %s%s", state.value, masked,
                 f" ({detail})" if detail else "")
        self._drive(PATTERNS[state])

    def _drive(self, pattern: Pattern) -> None:
        for dev, spec, method in ((self._led, pattern.led, "blink"),
                                  (self._buzzer, pattern.buzzer, "beep")):
            if dev is None:
                continue
            if spec is None:
                dev.off()
                continue
            on, off, n = spec
            k = self.time_scale
            # A repeating pattern must never block the caller.
            getattr(dev, method)(on_time=on * k, off_time=off * k, n=n,
                                 background=self.background or n is None)

    def close(self) -> None:
        """Switch everything off and release the pins."""
        for dev in (self._led, self._buzzer):
            if dev is not None:
                dev.close()
        self._led = self._buzzer = None
        self.available = False
