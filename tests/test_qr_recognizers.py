"""Payload recognizers: CCCD, BHYT, URL, opaque tokens, garbage (DCC and bzgw QR have their own)."""

from __future__ import annotations

import unicodedata

import pytest

from contract.records import CheckInKind
from core.clock import ReplayClock
from qr.mask import mask_id, mask_name, mask_person
from qr.payload import DEFAULT_TOKEN_KEY, token_hash
from qr.recognizers import Recognizer
from qr.records import DecodedCode, Rejected, ScannedCheckIn

TS = 1_630_000_000.0
CCCD = "001099012345|123456789|Nguyễn Văn An|01011999|Nam|Số 1, Phường X, Hà Nội|15082021"


@pytest.fixture
def rec() -> Recognizer:
    return Recognizer()


def classify(rec: Recognizer, payload: str | bytes) -> object:
    return rec.classify(payload, ts=TS)


def test_cccd_keeps_number_name_and_birth_date_only(rec: Recognizer) -> None:
    clock = ReplayClock(TS)
    got = rec.recognize(CCCD, ts=TS, clock=clock.epoch())
    assert isinstance(got, ScannedCheckIn)
    assert got.kind is CheckInKind.CCCD
    assert got.subject == "001099012345"
    assert got.fields == {"name": "Nguyễn Văn An", "birth_date": "1999-01-01"}
    assert got.masked == "NGUY*** V** A**, ***2345"
    assert got.ts == TS and got.clock == clock.epoch()


@pytest.mark.parametrize("payload", [
    # old ID empty, female (century digit 1), trailing newline, newer cards' extra fields
    "001199012345||Trần Thị Bình|01011999|Nữ|Số 1|15082021\r\n",
    "079303001234||Lê Thị Cúc|28022003|Nữ|Số 2|01032021|extra|fields",
    # gender spelled in decomposed Unicode, as some encoders emit it
    "001099012345||Phạm An|01011999|" + unicodedata.normalize("NFD", "Nam") + "|x|15082021",
    "001301012345||Đỗ Minh|05052001|" + unicodedata.normalize("NFD", "Nữ") + "||10102021",
])
def test_cccd_variants_are_accepted(rec: Recognizer, payload: str) -> None:
    got = classify(rec, payload)
    assert not isinstance(got, Rejected), got
    assert got.kind is CheckInKind.CCCD  # type: ignore[union-attr]
    assert got.subject == payload[:12]  # type: ignore[union-attr]


@pytest.mark.parametrize(("payload", "reason"), [
    ("001099012345|123456789|Nguyễn Văn An|01011999", "expected at least 7 fields, found 4"),
    ("001099012345|12345|Nguyễn Văn An|01011999|Nam|x|15082021", "old ID number is not 9"),
    ("001099012345||  |01011999|Nam|x|15082021", "name is missing"),
    ("001099012345||R2D2|01011999|Nam|x|15082021", "not a name"),
    ("001099012345||An|31021999|Nam|x|15082021", "birth date is not a valid"),
    ("001099012345||An|1999-01-01|Nam|x|15082021", "birth date is not a valid"),
    ("001099012345||An|01011999|Male|x|15082021", "neither Nam nor Nữ"),
    ("001099012345||An|01011999|Nam|x|15/08/2021", "issue date is not a valid"),
    ("001099012345||An|01011999|Nam|x|15081990", "issue date is before the birth date"),
    ("001099012345||An|01011998|Nam|x|15082021", "does not match the birth year"),
    ("001099012345||An|01011999|Nữ|x|15082021", "does not match the birth year or gender"),
    ("001299012345||An|01011999|Nam|x|15082021", "does not match the birth year"),
])
def test_malformed_cccd_is_rejected_with_reason(rec: Recognizer, payload: str,
                                               reason: str) -> None:
    got = classify(rec, payload)
    assert isinstance(got, Rejected)
    assert got.kind is CheckInKind.CCCD
    assert reason in got.reason
    for secret in ("Nguyễn", "01011999", "001099012345", "An|"):
        assert secret not in got.reason  # reasons never quote the payload


def test_bhyt_with_hex_name(rec: Recognizer) -> None:
    name_hex = "Nguyễn Văn An".encode().hex()
    got = classify(rec, f"DN4010123456789|{name_hex}|01/01/1990|1|Hà Nội|01/01/2021|-|")
    assert not isinstance(got, Rejected)
    assert got.kind is CheckInKind.BHYT  # type: ignore[union-attr]
    assert got.subject == "0123456789"  # type: ignore[union-attr]
    assert got.fields == {"name": "Nguyễn Văn An", "birth_date": "1990-01-01"}  # type: ignore[union-attr]


def test_bhyt_with_plain_name_and_year_only(rec: Recognizer) -> None:
    got = classify(rec, "GD4790123456789|Trần Bình|1985|2")
    assert getattr(got, "kind", None) is CheckInKind.BHYT
    assert got.fields["birth_date"] == "1985"  # type: ignore[union-attr]


@pytest.mark.parametrize("payload", [
    "DN4010123456789",  # code alone
    "DN9010123456789|Nguyen|01/01/1990",  # benefit level 9 does not exist
    "DN401012345678|Nguyen|01/01/1990",  # 14 characters
    "DN4010123456789|4e677579|31/02/1990",  # impossible birth date
    "DN4010123456789|c3|01/01/1990",  # hex that is not UTF-8
])
def test_unsure_bhyt_falls_back_to_opaque(rec: Recognizer, payload: str) -> None:
    got = classify(rec, payload)
    assert getattr(got, "kind", None) is CheckInKind.OPAQUE


def test_url_is_kept_as_keyed_hash(rec: Recognizer) -> None:
    url = "https://qr.example.vn/c/8f3a9b2c?u=0901234567"
    got = classify(rec, url)
    assert getattr(got, "kind", None) is CheckInKind.URL
    assert got.subject == token_hash(DEFAULT_TOKEN_KEY, url.encode())  # type: ignore[union-attr]
    assert got.fields == {"host": "qr.example.vn"}  # type: ignore[union-attr]
    assert "0901234567" not in got.masked and "8f3a9b2c" not in got.masked  # type: ignore[union-attr]
    assert isinstance(classify(rec, "https:///nohost"), Rejected)


def test_opaque_token_subject_is_a_keyed_hash(rec: Recognizer) -> None:
    token = "PCCOVID:7f1c2e9a-4b3d-4a51-9e0b-2f6c1d8e4a77"
    a = classify(rec, token)
    b = classify(Recognizer(token_key=b"province-secret-key-0001"), token)
    assert getattr(a, "kind", None) is CheckInKind.OPAQUE
    assert a.subject != b.subject  # type: ignore[union-attr]
    assert a.subject == token_hash(DEFAULT_TOKEN_KEY, token.encode())  # type: ignore[union-attr]
    assert len(a.subject) == 32  # type: ignore[union-attr]
    assert "7f1c2e9a" not in a.subject + a.masked  # type: ignore[union-attr]
    # Same token, same subject: the matcher can find it again.
    assert classify(rec, token) == a


@pytest.mark.parametrize(("payload", "reason"), [
    ("", "empty payload"),
    ("   \r\n", "empty payload"),
    (b"\x00\x01binary\xff", "binary data"),
    ("tab\tok but bell\x07", "control characters"),
    ("x" * 8000, "too large"),
    (b"y" * 5000, "too large"),
])
def test_garbage_is_rejected(rec: Recognizer, payload: str | bytes, reason: str) -> None:
    got = classify(rec, payload)
    assert isinstance(got, Rejected)
    assert reason in got.reason


def test_decoded_binary_content_is_rejected(rec: Recognizer) -> None:
    code = DecodedCode(raw=b"\x89PNG\r\n", text="\x89PNG\r\n", format="QRCode",
                       decoder="zxing", content="binary")
    got = classify(rec, code)  # type: ignore[arg-type]
    assert isinstance(got, Rejected) and "binary" in got.reason


@pytest.mark.parametrize(("name", "masked"), [
    ("Nguyễn Văn An", "NGUY*** V** A**"),
    ("Lê Thị Cúc", "L*** T** C**"),
    ("  phạm   thu  ", "P*** T**"),
    ("Nguyễn", "NGUY***"),
    ("", "***"),
])
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked


def test_mask_id_and_person() -> None:
    assert mask_id("001099012345") == "***2345"
    assert mask_id("+84901234567") == "***567"
    assert mask_id("12") == "***"
    assert mask_person("Trần Bình", "001099012345") == "T*** B**, ***2345"
    assert mask_person(None, "001099012345") == "***2345"
