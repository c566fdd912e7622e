"""Identities sealed for custodians: k of n approvals of one request open its days only.

Real keys (``init_custody``), real Shamir shares, real signatures; every way an approval can be
wrong opens nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bzgw.cli import cli
from contract.custody import (
    DAY,
    BlindRatchet,
    IdentityKeyError,
    IdentitySealer,
    blind_tag,
    load_identity_keys,
    lookup_tags,
    open_identity,
)
from core.canonical import canonical_json
from matcher.custody import (
    CustodyError,
    InitResult,
    Request,
    Window,
    approve,
    init_custody,
    load_share_file,
    make_request,
    open_request,
)

NAMES = ["health-office", "police", "peoples-committee"]
NOW = time.time()
TODAY = int(NOW // DAY)


@pytest.fixture(scope="module")
def custody(tmp_path_factory: pytest.TempPathFactory) -> InitResult:
    return init_custody(NAMES, 2, tmp_path_factory.mktemp("custody"), first_day=TODAY - 10,
                        days=20)


def _request(tmp_path: Path, days: tuple[int, ...] = (TODAY,), venue: str = "hn/cho-a",
             lookup: bool = False) -> Request:
    f0 = tmp_path / "f0.json"
    f0.write_text('{"data": []}')
    return make_request("HN-1", f0, [Window(venue, d * DAY + 3600, d * DAY + 7200)
                                     for d in days], lookup=lookup)


def _approvals(custody: InitResult, req: Request, names: list[str]) -> list[dict[str, Any]]:
    return [approve(req, load_share_file(custody.custodians[n])) for n in names]


def test_custodian_init_writes_public_and_private_files(custody: InitResult) -> None:
    keys = load_identity_keys(custody.identity_keys)
    assert (keys.k, keys.n, keys.first_day, keys.last_day) == (2, 3, TODAY - 10, TODAY + 9)
    assert [c.name for c in keys.custodians] == NAMES
    for path in [custody.blind_key, *custody.custodians.values()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    public = custody.identity_keys.read_text()
    for path in custody.custodians.values():  # no share is in the public file
        share = json.loads(path.read_text())["shares"][0]
        assert share not in public
    with pytest.raises(CustodyError, match="exists"):
        init_custody(NAMES, 2, custody.identity_keys.parent)
    with pytest.raises(CustodyError, match="alone"):
        init_custody(["a", "b"], 1, custody.identity_keys.parent / "x")


def test_custodian_two_of_three_rebuild_exactly_the_requested_days(custody: InitResult,
                                                                  tmp_path: Path) -> None:
    req = _request(tmp_path, days=(TODAY - 1, TODAY))
    for pair in (NAMES[:2], NAMES[1:], [NAMES[0], NAMES[2]]):
        opening = open_request(custody.keys, req, _approvals(custody, req, pair))
        assert sorted(opening.identity) == sorted(opening.blind) == [TODAY - 1, TODAY]
        assert opening.custodians == sorted(pair)
    # the rebuilt keys open what a gateway sealed that day, and only that day
    sealer = IdentitySealer(custody.keys, BlindRatchet(_blind_copy(custody, tmp_path)))
    got = sealer.seal(TODAY * DAY + 5000, "001099012345", {"name": "Lê C"})
    other = sealer.seal((TODAY + 1) * DAY + 5000, "001099012345", {"name": "Lê C"})
    opening = open_request(custody.keys, req, _approvals(custody, req, NAMES[:2]))
    key = opening.private(TODAY)
    assert key is not None
    assert open_identity(key, TODAY, got.sealed) == ("001099012345", {"name": "Lê C"})
    assert opening.private(TODAY + 1) is None  # another day is not in the opening
    for k in opening.identity.values():  # and no key it holds opens that day
        with pytest.raises(IdentityKeyError):
            open_identity(k, TODAY + 1, other.sealed)
    tags = lookup_tags(opening.blind, ["001099012345"], [])
    assert got.tags[0] in tags and other.tags[0] not in tags


def _blind_copy(custody: InitResult, tmp_path: Path) -> Path:
    dst = tmp_path / "blind.key"
    dst.write_bytes(custody.blind_key.read_bytes())
    return dst


@pytest.mark.parametrize("case", ["k-1", "same custodian twice", "forged", "altered shares",
                                  "altered request", "other request", "replayed", "expired",
                                  "wrong share"])
def test_custodian_bad_approvals_open_nothing(custody: InitResult, tmp_path: Path,
                                              case: str) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    req = _request(tmp_path)
    docs = _approvals(custody, req, NAMES[:2])
    used: list[str] = []
    now = None
    if case == "k-1":
        docs = docs[:1]
    elif case == "same custodian twice":
        docs = [docs[0], _approvals(custody, req, NAMES[:1])[0]]
    elif case == "forged":  # a valid-looking approval signed by someone else's key
        body = {k: v for k, v in docs[1].items() if k != "sig"}
        docs[1]["sig"] = Ed25519PrivateKey.generate().sign(canonical_json(body)).hex()
    elif case == "altered shares":
        day = str(TODAY)
        s = bytearray.fromhex(docs[1]["shares"][day])
        s[0] ^= 1
        docs[1]["shares"][day] = s.hex()
    elif case == "altered request":  # widened after approval: another request id
        req = Request(case=req.case, f0=req.f0, scope=(Window("*", 0, 4e9),), lookup=True,
                      created=req.created, expires=req.expires, nonce=req.nonce)
    elif case == "other request":
        other = _request(tmp_path)
        docs = [docs[0], *_approvals(custody, other, NAMES[1:2])]
    elif case == "replayed":
        used = [req.id]
    elif case == "expired":
        now = req.expires + 1
    elif case == "wrong share":  # a custodian signs a share that is not theirs
        sf = load_share_file(custody.custodians[NAMES[1]])
        doc = {k: v for k, v in docs[1].items() if k != "sig"}
        doc["shares"] = {str(TODAY): os.urandom(64).hex()}
        doc["sig"] = sf.signing_key.sign(canonical_json(doc)).hex()
        docs[1] = doc
    with pytest.raises(CustodyError):
        open_request(custody.keys, req, docs, used=used, now=now)


def test_custodian_blind_ratchet_forgets_past_days(custody: InitResult, tmp_path: Path) -> None:
    path = _blind_copy(custody, tmp_path)
    ratchet = BlindRatchet(path)
    assert ratchet.day == TODAY - 10
    k_today = ratchet.key_for(TODAY)
    assert k_today is not None
    assert json.loads(path.read_text())["day"] == TODAY - 1  # one day of slack kept
    assert ratchet.key_for(TODAY - 1) is not None
    assert ratchet.key_for(TODAY - 2) is None  # forgotten: a stolen unit cannot tag it
    assert BlindRatchet(path).key_for(TODAY - 5) is None  # also after a restart
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the custodians' shares rebuild the same key, so approved lookups find the tags
    req = _request(tmp_path)
    opening = open_request(custody.keys, req, _approvals(custody, req, NAMES[:2]))
    assert opening.blind[TODAY] == k_today


def test_custodian_no_key_for_a_day_refuses_the_checkin(custody: InitResult,
                                                       tmp_path: Path) -> None:
    sealer = IdentitySealer(custody.keys, BlindRatchet(_blind_copy(custody, tmp_path)))
    with pytest.raises(IdentityKeyError, match="extend"):
        sealer.seal((TODAY + 30) * DAY, "001099012345", {})


def test_custodian_blind_index_resists_brute_force_where_hashes_do_not(
        custody: InitResult, tmp_path: Path) -> None:
    # A CCCD number: province (3 digits), century/sex (1), birth year (2), then 6 digits.
    # Knowing where and roughly when someone was born leaves a million candidates.
    secret = "001099412345"
    prefix = secret[:6]
    candidates = (f"{prefix}{n:06d}" for n in range(1_000_000))
    plain = hashlib.sha256(secret.encode()).digest()
    t = time.perf_counter()
    found = next(c for c in candidates if hashlib.sha256(c.encode()).digest() == plain)
    plain_s = time.perf_counter() - t
    assert found == secret  # a plain hash gives the number back in about a second
    # A hash keyed with something the matcher holds is no better: the key is on its disk.
    matcher_key = os.urandom(32)
    keyed = hmac.new(matcher_key, secret.encode(), hashlib.sha256).digest()
    found = next(c for c in (f"{prefix}{n:06d}" for n in range(1_000_000))
                 if hmac.new(matcher_key, c.encode(), hashlib.sha256).digest() == keyed)
    assert found == secret
    # Ours: the stored tag is under the day's blind key, which is only on gateways (moving
    # forward) and in the custodians' shares. With every key the matcher's disk holds, the
    # same search finds nothing.
    sealer = IdentitySealer(custody.keys, BlindRatchet(_blind_copy(custody, tmp_path)))
    tag = sealer.seal(TODAY * DAY + 60, secret, {}).tags[0]
    on_matcher = [matcher_key, hashlib.sha256(custody.identity_keys.read_bytes()).digest()]
    for key in on_matcher:
        assert not any(blind_tag(key, "s", f"{prefix}{n:06d}") == tag
                       for n in range(0, 1_000_000, 7))  # a seventh of the space per key
    print(f"plain SHA-256 brute force of a CCCD: {plain_s:.2f} s")


def test_custodian_commands_init_list_approve(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["custodian", "init", "--name", "a", "--name", "b", "--name", "c",
                              "-k", "2", "--days", "3", "--out", str(tmp_path / "keys")])
    assert res.exit_code == 0, res.output
    assert "3 custodians, 2 needed" in res.output
    res = runner.invoke(cli, ["custodian", "list", str(tmp_path / "keys" / "identity-keys.json")])
    assert res.exit_code == 0 and "2 of 3 custodians must approve" in res.output
    assert "1. a" in res.output and "3. c" in res.output
    f0 = tmp_path / "f0.json"
    f0.write_text("{}")
    req = make_request("HN-2", f0, [Window("hn/cho-a", NOW - 60, NOW)], lookup=False)
    (tmp_path / "req.json").write_text(json.dumps(req.to_json()))
    args = ["custodian", "approve", "--share", str(tmp_path / "keys" / "custodian-a.json"),
            "--request", str(tmp_path / "req.json"), "--out", str(tmp_path / "ok.json")]
    res = runner.invoke(cli, args, input="n\n")  # shown first, then asked
    assert res.exit_code == 1 and "HN-2" in res.output and not (tmp_path / "ok.json").exists()
    res = runner.invoke(cli, args, input="y\n")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "ok.json").read_text())
    assert doc["request"] == req.id and list(doc["shares"]) == [str(TODAY)]
    res = runner.invoke(cli, ["custodian", "init", "--name", "a", "-k", "2", "--out",
                              str(tmp_path / "one")])
    assert res.exit_code == 1 and "k <= n" in res.output
