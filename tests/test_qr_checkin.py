"""Check-in pipeline: cooldown, bounded memory, sink at once, feedback, and masking."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import segno
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from contract.records import CheckIn
from core.clock import ReplayClock
from gateway.feedback import Feedback
from qr.bzgwqr import keys_from, make_checkin_qr
from qr.checkin import CheckInPipeline, Cooldown
from qr.dcc import encode_dcc
from qr.decoder import Decoder
from qr.recognizers import Recognizer
from qr.records import FeedbackState
from qr.sources.folder import FolderSource

T0 = 1_700_000_000.0
CCCD = "001099012345|123456789|Nguyễn Văn An|01011999|Nam|Số 7 Hàng Bạc, Hà Nội|15082021"
CCCD2 = "079303001234||Trần Thị Bình|28022003|Nữ|Số 2 Lê Lợi, Huế|01032021"


def frame(*payloads: str | bytes) -> np.ndarray:
    canvas = np.full((480, 640), 255, np.uint8)
    x = 8
    for p in payloads:
        q = segno.make(p, error="m", micro=False)
        sym = np.where(np.array(list(q.matrix_iter(scale=3, border=2)), bool), 0, 255)
        canvas[8:8 + sym.shape[0], x:x + sym.shape[1]] = sym
        x += sym.shape[1] + 8
    return canvas


EMPTY = np.full((480, 640), 255, np.uint8)


class Harness:
    def __init__(self, **kwargs: object) -> None:
        self.clock = ReplayClock(T0)
        self.sunk: list[CheckIn] = []
        self.feedback = Feedback(led_pin=None, buzzer_pin=None, clock=self.clock.now)
        args: dict = {"recognizer": Recognizer(), "sink": self.sunk.append,
                      "decoder": Decoder(budget_ms=50), "cooldown_s": 300.0,
                      "feedback": self.feedback, "repeat_s": 3.0}
        args.update(kwargs)
        self.p = CheckInPipeline(**args)

    def at(self, t: float, image: np.ndarray) -> list:
        self.clock.advance(T0 + t)
        return self.p.process_frame(image, None, self.clock)

    def told(self) -> list[str]:
        return [e["state"] for e in reversed(self.feedback.events.recent(1000))]


def test_a_code_held_in_view_is_one_check_in_handed_on_at_once() -> None:
    h = Harness()
    f = frame(CCCD)
    events = h.at(0.0, f)
    assert [e.state for e in events] == [FeedbackState.ACCEPTED]
    assert len(h.sunk) == 1  # the sink has it before the next frame arrives
    assert h.sunk[0].subject == "001099012345" and h.sunk[0].ts == T0
    for i in range(1, 30):  # three seconds of frames at 10 fps
        h.at(i / 10, f)
    assert len(h.sunk) == 1
    assert h.told() == ["accepted"]  # repeats of one presentation are silent
    assert h.p.stats.accepted == 1 and h.p.stats.duplicates == 29


def test_shown_again_within_cooldown_is_already_checked_in() -> None:
    h = Harness()
    h.at(0, frame(CCCD))
    h.at(1, EMPTY)
    events = h.at(60, frame(CCCD))  # put away, shown again a minute later
    assert [(e.state, e.signalled) for e in events] == [(FeedbackState.ALREADY, True)]
    assert h.told() == ["accepted", "already checked in"]
    assert len(h.sunk) == 1


def test_after_the_cooldown_it_is_a_new_check_in() -> None:
    h = Harness(cooldown_s=120.0)
    h.at(0, frame(CCCD))
    h.at(200, frame(CCCD))
    assert len(h.sunk) == 2
    assert [c.ts for c in h.sunk] == [T0, T0 + 200]


def test_a_code_that_never_leaves_the_view_is_never_checked_in_twice() -> None:
    h = Harness(cooldown_s=10.0)
    f = frame(CCCD)
    for i in range(0, 300):  # a poster in view for 30 s, three cooldowns
        h.at(i / 10, f)
    assert len(h.sunk) == 1


def test_two_people_in_one_frame() -> None:
    h = Harness()
    events = h.at(0, frame(CCCD, CCCD2))
    assert sorted(e.masked for e in events) == ["NGUY*** V** A**, ***2345",
                                                "T*** T** B**, ***1234"]
    assert sorted(c.subject for c in h.sunk) == ["001099012345", "079303001234"]


def test_memory_is_bounded() -> None:
    cd = Cooldown(300.0, max_entries=3)
    for i in range(5):
        assert cd.observe(f"code-{i}".encode(), float(i)) == (True, False)
    assert len(cd) == 3 and cd.evicted == 2
    # Expired entries go first, without counting as evictions.
    assert cd.observe(b"late", 1000.0) == (True, False)
    assert len(cd) == 1 and cd.evicted == 2


def test_codes_are_remembered_by_a_per_process_keyed_hash() -> None:
    a, b = Cooldown(60.0), Cooldown(60.0)
    raw = CCCD.encode()
    assert a.key(raw) != b.key(raw)
    assert a.key(raw) not in (hashlib.sha256(raw).digest()[:16], raw[:16])


def test_refused_code_is_signalled_once_per_presentation_and_never_sunk() -> None:
    h = Harness()
    bad = "001099012345|123456789|Nguyễn Văn An|31021999|Nam|x|15082021"
    for i in range(10):
        events = h.at(i / 10, frame(bad))
    assert events[0].state is FeedbackState.UNREADABLE and not events[0].signalled
    h.at(2, EMPTY)
    h.at(8, frame(bad))  # shown again
    assert h.told() == ["unreadable", "unreadable"]
    assert h.feedback.events.recent(1)[0]["detail"] == (
        "CCCD: birth date is not a valid ddmmyyyy date")
    assert h.sunk == [] and h.p.stats.rejected == 11


def test_unreadable_symbol_is_signalled_rate_limited() -> None:
    h = Harness()
    q = segno.make("DAMAGED CODE PAYLOAD 1234567890" * 2, error="l", micro=False)
    sym = np.where(np.array(list(q.matrix_iter(scale=4, border=4)), bool), 0, 255)
    sym = sym.astype(np.uint8)
    s = sym.shape[0]
    sym[s // 3: 2 * s // 3, s // 4: 3 * s // 4] = 255
    damaged = np.full((480, 640), 255, np.uint8)
    damaged[10:10 + s, 10:10 + s] = sym
    for i in range(5):
        h.at(i / 10, damaged)
    assert h.told() == ["unreadable"]
    h.at(5, damaged)
    assert h.told() == ["unreadable", "unreadable"]
    assert h.p.stats.undecodable == 6


def test_a_failing_sink_loses_nothing() -> None:
    h = Harness()
    calls: list[CheckIn] = []

    def flaky(c: CheckIn) -> None:
        calls.append(c)
        if len(calls) == 1:
            raise OSError("outbox busy")

    h.p.sink = flaky
    events = h.at(0, frame(CCCD))
    # staff hear "not saved", never "accepted", for a check-in the sink could not take
    assert [e.state.value for e in events] == ["not saved"]
    assert h.told() == ["not saved"] and h.p.stats.not_saved == 1
    assert "outbox busy" in events[0].reason and h.p.stats.accepted == 0
    h.at(0.1, frame(CCCD))  # the next frame retries: the code was not remembered
    assert len(calls) == 2 and h.p.stats.accepted == 1
    assert h.told() == ["not saved", "accepted"]


def test_no_unmasked_identity_reaches_logs_or_events(caplog: pytest.LogCaptureFixture) -> None:
    ed = Ed25519PrivateKey.generate()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    person = make_checkin_qr(ed, kind="person", ident="pid-77881", name="Lê Thị Cúc",
                             phone="+84987654321", iat=int(T0), exp=int(T0) + 86400)
    dcc = encode_dcc({"ver": "1.3.0", "nam": {"fn": "Phạm", "gn": "Minh Đức"},
                      "dob": "1988-04-30", "v": [{"ci": "URN:UVCI:01:VN:Q7W8E9R0#K"}]},
                     key=ec_key, kid=b"kid-0001", iat=int(T0) - 9, exp=int(T0) + 86400)
    token = "PCCOVID-7f1c2e9a4b3d4a519e0b2f6c1d8e4a77"
    secrets = ["Nguyễn", "NGUYỄN", "Văn An", "001099012345", "123456789", "1999", "Hàng Bạc",
               "Lê Thị Cúc", "+84987654321", "987654321", "pid-77881", "Phạm", "Minh Đức",
               "1988", "Q7W8E9R0", "7f1c2e9a", "Trần Thị Bình", "079303001234"]
    h = Harness(recognizer=Recognizer(checkin_keys=keys_from([ed.public_key()])))
    caplog.set_level(logging.DEBUG)
    events = []
    for i, payload in enumerate([CCCD, person, dcc, token, CCCD2]):
        events += h.at(float(i * 10), frame(payload))
        events += h.at(float(i * 10 + 5), frame(payload))  # again: "already checked in"
    bad = CCCD2.replace("28022003", "30022003")
    events += h.at(100.0, frame(bad))

    assert len(h.sunk) == 5  # the sink (the sealer) gets the real identity...
    assert {c.kind.value for c in h.sunk} == {"cccd", "bzgw", "dcc", "opaque"}
    shown = caplog.text + repr(events) + repr(h.feedback.events.recent(100))
    for secret in secrets:  # ...nothing else does
        assert secret.casefold() not in shown.casefold(), secret
    assert "NGUY*** V** A**, ***2345" in caplog.text
    assert "L*** T** C**, ***321" in shown


def test_run_consumes_a_folder_source(tmp_path: Path) -> None:
    for i, payload in enumerate([CCCD, CCCD2, CCCD]):
        Image.fromarray(frame(payload)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    h = Harness()
    source = FolderSource(tmp_path, clock=h.clock, once=True)
    asyncio.run(h.p.run(source, h.clock))
    assert sorted(c.subject for c in h.sunk) == ["001099012345", "079303001234"]
    assert h.p.stats.frames == 3 and h.p.stats.duplicates == 1
    assert source.unreadable == ["broken.png"]
