"""Staff LED/buzzer feedback, driven through gpiozero's MockFactory pins."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from gateway.feedback import PATTERNS, Feedback, FeedbackEvents
from qr.config import QrConfig
from qr.records import FeedbackState

FAST = 0.05  # patterns played 20× faster: same sequences, quicker tests


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


def states(factory: MockFactory, pin: int) -> list[bool]:
    return [s.state for s in factory.pin(pin).states]


def intervals(factory: MockFactory, pin: int) -> list[float]:
    st = factory.pin(pin).states
    return [b.timestamp - a.timestamp for a, b in itertools.pairwise(st[1:])]


def test_accepted_is_one_long_light_and_one_beep(factory: MockFactory) -> None:
    fb = Feedback(led_pin=17, buzzer_pin=27, pin_factory=factory, background=False,
                  time_scale=FAST)
    fb.signal(FeedbackState.ACCEPTED, "NGUY*** V** A**, ***2345")
    assert states(factory, 17) == [False, True, False]
    assert states(factory, 27) == [False, True, False]
    on_led = intervals(factory, 17)[0]
    on_buzz = intervals(factory, 27)[0]
    assert on_led > on_buzz  # the light stays on longer than the beep


def test_already_and_unreadable_are_told_apart(factory: MockFactory) -> None:
    fb = Feedback(led_pin="GPIO17", buzzer_pin="GPIO27", pin_factory=factory,
                  background=False, time_scale=FAST)
    fb.signal(FeedbackState.ALREADY)
    assert states(factory, 17) == [False, True, False, True, False]  # two blinks
    assert states(factory, 27) == [False, True, False, True, False]  # two beeps
    factory.pin(17).clear_states()
    factory.pin(27).clear_states()
    fb.signal(FeedbackState.UNREADABLE, detail="DCC: expired")
    assert states(factory, 17) == [False, True, False, True, False, True, False]  # three
    assert states(factory, 27) == [False, True, False]  # one long buzz


def test_camera_fault_blinks_until_the_camera_is_back(factory: MockFactory) -> None:
    fb = Feedback(led_pin=17, buzzer_pin=None, pin_factory=factory, background=False,
                  time_scale=FAST)
    on, off, n = PATTERNS[FeedbackState.CAMERA_FAULT].led  # type: ignore[misc]
    assert n is None  # repeats: runs in the background even when background=False
    fb.signal(FeedbackState.CAMERA_FAULT, detail="no frame for 5 s")
    assert fb.camera_fault
    deadline = time.monotonic() + 5
    while len(states(factory, 17)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert states(factory, 17)[:2] == [False, True]
    fb.signal(FeedbackState.CAMERA_OK)
    assert not fb.camera_fault
    assert factory.pin(17).state is False
    n_states = len(states(factory, 17))
    time.sleep((on + off) * FAST + 0.1)
    assert len(states(factory, 17)) == n_states  # blinking stopped
    fb.close()


def test_events_are_recorded_newest_first_with_masked_text_only(factory: MockFactory) -> None:
    times = iter([10.0, 11.0, 12.0])
    fb = Feedback(pin_factory=factory, background=False, time_scale=FAST,
                  clock=lambda: next(times))
    fb.signal(FeedbackState.ACCEPTED, "NGUY*** V** A**, ***2345")
    fb.signal(FeedbackState.ALREADY, "NGUY*** V** A**, ***2345")
    fb.signal(FeedbackState.UNREADABLE, detail="CCCD: birth date is not a valid ddmmyyyy date")
    assert fb.events.recent(2) == [
        {"ts": 12.0, "state": "unreadable", "masked": "",
         "detail": "CCCD: birth date is not a valid ddmmyyyy date"},
        {"ts": 11.0, "state": "already checked in", "masked": "NGUY*** V** A**, ***2345",
         "detail": ""},
    ]
    assert len(fb.events.recent(50)) == 3
    assert fb.events.recent(0) == []


def test_event_list_is_bounded_and_counts_drops() -> None:
    events = FeedbackEvents(maxlen=3)
    fb = Feedback(led_pin=None, buzzer_pin=None, events=events, clock=lambda: 1.0)
    for _ in range(5):
        fb.signal(FeedbackState.ACCEPTED, "x")
    assert len(events.recent(10)) == 3
    assert events.dropped == 2 and events.total == 5


def test_no_gpio_is_a_quiet_no_op() -> None:
    # This machine has no GPIO: gpiozero cannot load any pin factory.
    fb = Feedback(led_pin="GPIO17", buzzer_pin="GPIO27")
    assert not fb.available
    assert "no GPIO" in fb.problem
    fb.signal(FeedbackState.ACCEPTED, "T*** B**, ***2345")  # no exception, no warning
    fb.signal(FeedbackState.CAMERA_FAULT)
    assert [e["state"] for e in fb.events.recent(5)] == ["camera fault", "accepted"]
    fb.close()


def test_disabled_in_config_drives_no_pins(factory: MockFactory) -> None:
    cfg = QrConfig(feedback=False, led_pin="GPIO5", buzzer_pin="GPIO6")
    fb = Feedback.from_config(cfg, pin_factory=factory, background=False, time_scale=FAST)
    fb.signal(FeedbackState.ACCEPTED, "x")
    assert not fb.available and fb.problem == "disabled in config"
    assert states(factory, 5) == [False] and states(factory, 6) == [False]  # never driven
    assert fb.events.recent(1)[0]["state"] == "accepted"


def test_pins_come_from_config(factory: MockFactory) -> None:
    cfg = QrConfig(led_pin="GPIO5", buzzer_pin="GPIO6")
    fb = Feedback.from_config(cfg, pin_factory=factory, background=False, time_scale=FAST)
    fb.signal(FeedbackState.ACCEPTED, "x")
    assert states(factory, 5) == [False, True, False]
    assert states(factory, 6) == [False, True, False]
    fb.close()
    assert not fb.available
