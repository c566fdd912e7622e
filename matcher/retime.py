"""Applying gateways' clock corrections to stored records.

A gateway without a synchronised clock seals records in a clock epoch (boot id, wall −
monotonic offset); when it later learns the real offset (NTP, or matcher ack times) it sends a
signed correction ``(boot_id, old_offset → new_offset, uncertainty)`` in a later batch. The
store keeps every record's time on the basis of its epoch's ``applied_offset``: a correction
moves all records of the epoch by ``new − applied``, and records of an already corrected epoch
that arrive late (batches may arrive out of order) are moved on insert. The best correction
per epoch wins (smallest uncertainty, then the latest), so applying is idempotent.
"""

from __future__ import annotations

from matcher.db import Database

_TABLES = (("sightings", ("first_seen", "last_seen")), ("checkins", ("ts",)))


def _shift(db: Database, epoch_id: int, delta: float, seq: int | None = None) -> None:
    for table, cols in _TABLES:
        sets = ", ".join(f"{c} = {c} + ?" for c in cols)
        where = "epoch_id = ?" + (" AND seq = ?" if seq is not None else "")
        params = (*([delta] * len(cols)), epoch_id, *(() if seq is None else (seq,)))
        db.execute(f"UPDATE {table} SET {sets} WHERE {where}", params)


def after_insert(db: Database, gw_id: int, seq: int, has_corrections: bool) -> None:
    """Run inside the transaction that stored batch ``seq`` of gateway ``gw_id``."""
    # 1. Records just stored in an epoch that an earlier correction already re-timed.
    for epoch_id, offset, applied in db.execute(
            "SELECT id, clock_offset, applied_offset FROM clock_epochs WHERE gw_id = ? "
            "AND applied_offset <> clock_offset", (gw_id,)):
        _shift(db, int(epoch_id), float(applied) - float(offset), seq)
    if not has_corrections:
        return
    # 2. The best correction known for each not-synchronised epoch of this gateway.
    best: dict[tuple[str, float], tuple[float, float, str]] = {}
    for boot, old, new, unc, source in db.execute(
            "SELECT boot_id, old_offset, new_offset, uncertainty, source FROM "
            "clock_corrections WHERE gw_id = ? ORDER BY id", (gw_id,)):
        key = (boot, float(old))
        if key not in best or float(unc) <= best[key][1]:
            best[key] = (float(new), float(unc), source)
    for epoch_id, boot, offset, applied, eff_unc in db.execute(
            "SELECT id, boot_id, clock_offset, applied_offset, eff_uncertainty FROM "
            "clock_epochs WHERE gw_id = ? AND synced = 0", (gw_id,)):
        fix = best.get((boot, float(offset)))
        if fix is None:
            continue
        new, unc, source = fix
        if new == float(applied) and eff_unc is not None and float(eff_unc) == unc:
            continue
        if new != float(applied):
            _shift(db, int(epoch_id), new - float(applied))
        db.execute("UPDATE clock_epochs SET applied_offset = ?, eff_uncertainty = ?, "
                   "eff_source = ? WHERE id = ?", (new, unc, source, int(epoch_id)))
