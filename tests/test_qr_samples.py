"""Sample photos for the demo: they decode, recognise, and check in through the pipeline."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from core.clock import ReplayClock
from qr.bzgwqr import load_checkin_keys
from qr.recognizers import Recognizer
from qr.records import Rejected, ScannedCheckIn
from qr.samples import (
    CHECKIN_KEY_FILE,
    cccd_payload,
    check_in_folder,
    decode_and_recognize,
    make_sample_images,
)

PEOPLE = [{"name": "Nguyễn Văn An"}, {"name": "Trần Thị Bình", "gender": "Nữ"},
          {"name": "Lê Hoàng Cường", "birth_date": "2001-05-09"},
          {"name": "Phạm Thu Dung", "gender": "Nữ", "cccd": "079185001234",
           "birth_date": "1985-03-02"}]
NOW = 1_700_000_000.0


def test_samples_decode_to_the_people_they_were_made_for(tmp_path: Path) -> None:
    paths = make_sample_images(tmp_path, PEOPLE, size=(640, 480), now=NOW)
    assert [p.name for p in paths] == ["cccd-01.png", "cccd-02.png", "cccd-03.png",
                                       "cccd-04.png", "bzgw-person.png", "garbage.png"]
    assert all(Image.open(p).size == (640, 480) for p in paths)
    rec = Recognizer(checkin_keys=load_checkin_keys(tmp_path / CHECKIN_KEY_FILE))
    clock = ReplayClock(NOW + 60)
    results = [decode_and_recognize(p, clock, recognizer=rec) for p in paths]
    assert all(len(r) == 1 for r in results)
    got = [r[0] for r in results]
    for i, person in enumerate(PEOPLE):
        c = got[i]
        assert isinstance(c, ScannedCheckIn), c
        assert c.fields["name"] == person["name"]
        assert c.subject == cccd_payload(person, index=i).split("|")[0]
    assert got[3].subject == "079185001234"  # type: ignore[union-attr]
    assert isinstance(got[4], ScannedCheckIn) and got[4].kind.value == "bzgw"
    assert isinstance(got[5], Rejected) and "binary" in got[5].reason


def test_same_seed_same_photos(tmp_path: Path) -> None:
    a = make_sample_images(tmp_path / "a", PEOPLE[:2], now=NOW)
    b = make_sample_images(tmp_path / "b", PEOPLE[:2], now=NOW)
    assert [p.read_bytes() for p in a[:2]] == [p.read_bytes() for p in b[:2]]


def test_check_in_folder_runs_the_pipeline(tmp_path: Path) -> None:
    make_sample_images(tmp_path, PEOPLE, now=NOW)
    make_sample_images(tmp_path / "again", PEOPLE[:1], seed=99, now=NOW)  # not in the folder
    sunk: list[ScannedCheckIn] = []
    rec = Recognizer(checkin_keys=load_checkin_keys(tmp_path / CHECKIN_KEY_FILE))
    stats = check_in_folder(tmp_path, ReplayClock(NOW), sink=sunk.append, recognizer=rec)
    assert stats.frames == 6 and stats.accepted == 5 and stats.rejected == 1
    assert sorted(c.kind.value for c in sunk) == ["bzgw", "cccd", "cccd", "cccd", "cccd"]
