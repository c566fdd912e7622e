"""Outbox: sequence numbers, acks, bounds, drops, disk full, and the status command."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from crowd import crowd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import sealing as sealer
from contract.records import IdKind
from core.clock import ClockEpoch, ClockSource
from core.errors import OutboxFullError
from gateway.outbox import Outbox, OutboxError, read_status


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def epoch(self) -> ClockEpoch:
        return ClockEpoch("boot", 0.0, True, ClockSource.NTP)


def blob(seq: int, size: int = 1000) -> bytes:
    return seq.to_bytes(4, "big") * (size // 4)


def make_outbox(path: Path, clock: FakeClock | None = None, **kw: int) -> Outbox:
    kw.setdefault("max_bytes", 10_000_000)
    return Outbox(path, max_age_s=kw.pop("max_age_s", 86400), clock=clock or FakeClock(), **kw)


def test_append_allocates_seq_and_stores_exact_bytes(tmp_path: Path) -> None:
    with make_outbox(tmp_path / "o.db") as ob:
        seen: list[int] = []
        seqs = [ob.append(lambda s: seen.append(s) or blob(s)) for _ in range(5)]
        assert seqs == seen == [1, 2, 3, 4, 5]
        items = ob.pending(10)
        assert [i.seq for i in items] == seqs
        assert all(i.data == blob(i.seq) and i.size == 1000 for i in items)
        assert [i.seq for i in ob.pending(2, exclude=[1, 3])] == [2, 4]
        assert ob.status().next_seq == 6


def test_sequence_numbers_survive_restarts_even_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with make_outbox(path) as ob:
        for _ in range(3):
            ob.append(blob)
        assert ob.settle([1, 2, 3]) == 3
        assert ob.status().depth == 0
    with make_outbox(path) as ob:
        assert ob.append(blob) == 4
        assert ob.status().acked == 3


def test_failed_seal_stores_nothing_and_loses_no_number(tmp_path: Path) -> None:
    with make_outbox(tmp_path / "o.db") as ob:
        ob.append(blob)

        def boom(seq: int) -> bytes:
            raise sealer.SealError("key gone")

        with pytest.raises(sealer.SealError):
            ob.append(boom)
        assert ob.status().depth == 1
        assert ob.append(blob) == 2


def test_ack_reject_and_settle(tmp_path: Path) -> None:
    with make_outbox(tmp_path / "o.db") as ob:
        for _ in range(6):
            ob.append(blob)
        assert ob.ack(1) is True
        assert ob.ack(1) is False  # a duplicate ack is harmless
        assert ob.reject(2) is True
        assert ob.settle([3, 4, 99], rejected=[5]) == 3
        st = ob.status()
        assert (st.depth, st.acked, st.rejected, st.dropped_batches) == (1, 3, 2, 0)
        assert [i.seq for i in ob.pending(10)] == [6]


def test_byte_budget_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with make_outbox(path, max_bytes=3500) as ob:
        for _ in range(3):
            ob.append(blob)
        assert ob.status().dropped_batches == 0
        ob.append(blob)  # 4000 > 3500: seq 1 goes
        ob.append(lambda s: blob(s, 2000))  # 5000 > 3500: seqs 2 and 3 go
        st = ob.status()
        assert [i.seq for i in ob.pending(10)] == [4, 5]
        assert (st.dropped_batches, st.dropped_bytes, st.bytes) == (3, 3000, 3000)
        # a single batch above the budget is still kept (it is the newest data)
        ob.append(lambda s: blob(s, 8000))
        assert [i.seq for i in ob.pending(10)] == [6]
    assert read_status(path).dropped_batches == 5  # persisted


def test_retention_drops_by_age(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    with make_outbox(tmp_path / "o.db", clock, max_age_s=3600) as ob:
        ob.append(blob)
        clock.t += 1800
        ob.append(blob)
        clock.t += 1801
        assert ob.status().oldest_created_at == 1_000_000.0
        assert ob.enforce_retention() == 1
        assert [i.seq for i in ob.pending(5)] == [2]
        assert ob.enforce_retention(clock.t + 1800) == 1
        st = ob.status()
        assert (st.depth, st.dropped_batches, st.dropped_bytes) == (0, 2, 2000)


def test_disk_full_degrades_and_recovers(tmp_path: Path) -> None:
    with make_outbox(tmp_path / "o.db", max_file_bytes=64 * 1024) as ob:
        stored = []
        with pytest.raises(OutboxFullError):
            for _ in range(100):
                stored.append(ob.append(lambda s: blob(s, 8000)))
        st = ob.status()
        assert st.full and "full" in (st.last_error or "")
        assert 2 <= len(stored) < 10 and st.depth == len(stored)
        # sync keeps working while full: acks free room
        assert ob.settle(stored[:4]) == min(4, len(stored))
        nxt = ob.append(lambda s: blob(s, 8000))
        assert nxt == stored[-1] + 1  # the failed append used no number
        assert not ob.status().full
        assert ob.integrity_check() == "ok"


def test_only_sealed_bytes_reach_the_disk(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    _priv, pub = sealer.generate_matcher_keypair()
    s = sealer.Sealer(gateway_id="gw-a", matcher_public_key=pub, signing_key=key)
    batch = crowd(IdKind.BLUEZONE, 200)
    path = tmp_path / "o.db"
    with make_outbox(path) as ob:
        ob.append(lambda seq: s.seal(batch, seq=seq, created_at=1.0, clock=FakeClock().epoch()))
        cols = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(batches)")]
        assert cols == ["seq", "created_at", "size", "data", "boot_id", "mono", "synced"]
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert not any(x.ident in on_disk for x in batch.sightings)
        data = ob.pending(1)[0].data  # the ciphertext itself is there (split over pages)
        chunks = [data[i:i + 200] for i in range(0, len(data) - 200, 200)]
        assert sum(c in on_disk for c in chunks) > len(chunks) // 2


def test_concurrent_acks_and_appends(tmp_path: Path) -> None:
    with make_outbox(tmp_path / "o.db") as ob:
        errors: list[BaseException] = []

        def acker() -> None:
            try:
                for _ in range(200):
                    ob.settle([i.seq for i in ob.pending(5)])
            except BaseException as err:  # noqa: BLE001 - surfaced by the assert below
                errors.append(err)

        t = threading.Thread(target=acker)
        t.start()
        seqs = [ob.append(blob) for _ in range(300)]
        t.join()
        assert not errors and seqs == list(range(1, 301))
        st = ob.status()
        assert st.acked + st.depth == 300


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "o.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=r"o\.db"):
        make_outbox(bad)
    with pytest.raises(OutboxError, match="no outbox file"):
        read_status(tmp_path / "none.db")


def test_status_command(tmp_path: Path) -> None:
    from bzgw.cli import cli

    path = tmp_path / "state" / "o.db"
    with make_outbox(path, max_bytes=2500) as ob:
        for _ in range(4):
            ob.append(blob)
        runner = CliRunner()
        res = runner.invoke(cli, ["outbox", "status", "--db", str(path)])
        assert res.exit_code == 0, res.output
        assert "2 batches" in res.output and "2 batches (2,000 bytes)" in res.output
        res = runner.invoke(cli, ["outbox", "status", "--db", str(path), "--json"])
        data = json.loads(res.output)
        assert (data["depth"], data["bytes"], data["dropped_batches"], data["next_seq"]) == (
            2, 2000, 2, 5)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("outbox:\n  path: state/o.db\n")
    res = CliRunner().invoke(cli, ["outbox", "status", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["depth"] == 2
    res = CliRunner().invoke(cli, ["outbox", "status", "--db", str(tmp_path / "x.db")])
    assert res.exit_code == 1 and "no outbox file" in res.output
    res = CliRunner().invoke(cli, ["outbox", "status"])
    assert res.exit_code == 1 and "exactly one" in res.output


def test_status_of_an_outbox_file_created_but_never_committed(tmp_path: Path) -> None:
    # a daemon killed between creating the file and committing its schema
    import sqlite3

    f = tmp_path / "outbox.db"
    sqlite3.connect(f).close()
    st = read_status(f)
    assert (st.depth, st.next_seq) == (0, 1)
    f.write_bytes(b"not a database at all, just some text" * 100)
    with pytest.raises(OutboxError):
        read_status(f)
