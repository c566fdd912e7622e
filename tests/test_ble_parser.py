"""AD-structure parser: real payloads (bluetooth-data-tools' cases), Bluezone/EN layouts,
malformed input counted, never raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ble.parser import AdFields, parse_ad, uuid16_str, uuid32_str, uuid128_str, uuid128_wire

GAP_CASES = [
    "test_parse_advertisement_data_Prodigio_D83567A4F5A5_bytes",
    "test_parse_advertisement_data_Prodigio_D83567A4F5A5",
    "test_parse_advertisement_data_unknown_apple_device",
    "test_parse_advertisement_data_empty",
    "test_parse_advertisement_data_flags_only",
    "test_parse_advertisement_data_ignores_invalid",
    "test_parse_advertisement_data_trailing_minimum_ad_struct",
    "test_parse_advertisement_data_ignores_zero_type",
    "test_parse_advertisement_data_unknown_fd3d",
    "test_parse_advertisement_data_moat",
    "test_parse_advertisement_data_unknown_apple_215",
    "test_parse_advertisement_data_oral_b_toothbrush",
    "test_parse_advertisement_short_local_name",
    "test_parse_advertisement_complete_overrides_short_local_name",
    "test_parse_advertisement_short_local_name_ignored_after_complete",
    "test_parse_advertisement_data_32bit_service_data",
    "test_parse_advertisement_data_128bit_service_data",
    "test_parse_advertisement_data_32bit_and_128bit_service_data",
    "test_parse_advertisement_data_128bit_and_32bit_service_data",
    "test_parse_advertisement_data_128bit_service_data_tuple",
    "test_parse_advertisement_data_zero_padded_scan_included",
    "test_parse_advertisement_data_recovers_from_corrupt_data",
    "test_parse_advertisement_data_recovers_from_corrupt_data_2",
    "test_parse_advertisement_data_recovers_from_corrupt_data_3",
    "test_parse_advertisement_data_recovers_from_corrupt_data_43",
    "test_name_parser",
    "test_invalid_gap_num",
    "test_out_of_bounds_length",
    "test_out_of_bounds_length_by_one",
    "test_manufacturer_data_short_by_one",
    "test_manufacturer_data_short_by_two",
    "test_manufacturer_data_short_by_three",
    "test_manufacturer_data_short_by_four",
    "test_manufacturer_data_short_by_five",
    "test_manufacturer_data_single_byte",
    "test_service_data_short",
    "test_32bit_uuid_short",
    "test_128bit_uuid_short",
    "test_zero_padded_end",
    "test_zero_padded_out_of_bounds_length",
    "test_parse_advertisement_data_tx_power_single_byte",
]


def _view(f: AdFields) -> dict[str, Any]:
    """Our fields in the vocabulary of the corpus' expectations."""
    sd = {uuid16_str(k): "hex:" + v.hex() for k, v in f.service_data16.items()}
    sd.update({uuid32_str(k): "hex:" + v.hex() for k, v in f.service_data32.items()})
    sd.update({uuid128_str(k): "hex:" + v.hex() for k, v in f.service_data128.items()})
    return {
        "local_name": f.local_name,
        "service_uuids": [uuid16_str(u) for u in f.uuids16] + [uuid32_str(u) for u in f.uuids32]
        + [uuid128_str(u) for u in f.uuids128],
        "service_data": sd,
        "manufacturer_data": {str(k): "hex:" + v.hex() for k, v in f.manufacturer.items()},
        "tx_power": f.tx_power,
    }


@pytest.fixture(scope="module")
def gap_cases(corpora: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((corpora / "ble/ad_payloads/bluetooth_data_tools_gap_cases.json")
                      .read_text())
    return {c["test"]: c for c in data["cases"]}


@pytest.mark.parametrize("name", GAP_CASES)
def test_bluetooth_data_tools_case(name: str, gap_cases: dict[str, dict[str, Any]]) -> None:
    case = gap_cases[name]
    fields = parse_ad(bytes.fromhex("".join(case["ad_chunks_hex"])))
    got = _view(fields)
    for key, want in case["expected"].items():
        if key == "service_uuids":
            assert sorted(got[key]) == sorted(want), key
        else:
            assert got[key] == want, key


def test_corpus_lists_every_case_here(gap_cases: dict[str, dict[str, Any]]) -> None:
    assert sorted(gap_cases) == sorted(GAP_CASES)


def test_bluezone_android_layout() -> None:
    # Flags, 16-bit service list 0x4E56, manufacturer 0x22B5 + 12-byte ID (AOSP order).
    raw = bytes.fromhex("020106" "0303564e" "0fffb522" "b9a665d754fe65e665d76a45")
    f = parse_ad(raw)
    assert f.flags == 0x06
    assert f.uuids16 == [0x4E56]
    assert f.manufacturer == {0x22B5: bytes.fromhex("b9a665d754fe65e665d76a45")}
    assert f.malformed == 0


def test_gaen_ios_form() -> None:
    raw = bytes.fromhex("02011a" "03036ffd" "17166ffd" "e932e8b0688dfaec0062b7d6d35eefb5"
                        "eeaa91ac")
    f = parse_ad(raw)
    assert f.flags == 0x1A
    assert f.uuids16 == [0xFD6F]
    assert f.service_data16 == {0xFD6F: bytes.fromhex("e932e8b0688dfaec0062b7d6d35eefb5eeaa91ac")}


def test_bluezone_ios_foreground_uuid_in_wire_order() -> None:
    wire = uuid128_wire("00004E56-73F5-4BC4-A12F-17D1AD07A667")
    assert wire == bytes.fromhex("67a607add1172fa1c44bf573564e0000")
    f = parse_ad(b"\x02\x01\x1a\x11\x07" + wire + b"\x09\x09Bluezone")
    assert f.uuids128 == [wire]
    assert uuid128_str(f.uuids128[0]) == "00004e56-73f5-4bc4-a12f-17d1ad07a667"
    assert f.local_name == "Bluezone"


def test_tx_power_is_signed() -> None:
    assert parse_ad(bytes.fromhex("020af4")).tx_power == -12
    assert parse_ad(bytes.fromhex("020a04")).tx_power == 4


@pytest.mark.parametrize(("raw", "malformed"), [
    ("02ff01", 1),  # manufacturer without a whole company ID
    ("021601", 1),  # service data without a whole UUID
    ("0303564e1f", 1),  # a length running past the end
    ("0403564e01", 1),  # odd-length 16-bit UUID list: the whole UUID is kept, the rest counted
    ("010a", 1),  # TX power without a value
    ("0101", 1),  # Flags without a value
    ("0000000000", 0),  # padding only
])
def test_malformed_structures_are_counted(raw: str, malformed: int) -> None:
    assert parse_ad(bytes.fromhex(raw)).malformed == malformed


def test_structures_after_a_bad_one_of_known_length_still_parse() -> None:
    # A too-short service data structure, then a valid Bluezone manufacturer structure.
    f = parse_ad(bytes.fromhex("021601" "0fffb522" "b9a665d754fe65e665d76a45"))
    assert f.malformed == 1
    assert 0x22B5 in f.manufacturer
