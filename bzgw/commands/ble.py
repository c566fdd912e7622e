"""``bzgw ble`` commands: replay a capture, calibrate proximity."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import click

from ble.records import Advert
from contract.records import AdoptionCount, Sighting

_FLUSH_EVERY_S = 60.0  # replay: hand out finished sightings as capture time passes


@click.group("ble")
def ble_group() -> None:
    """BLE capture: replay captures, calibrate proximity."""


def _hex(b: bytes | None) -> str | None:
    return b.hex() if b is not None else None


def advert_json(a: Advert) -> dict[str, Any]:
    """JSON-ready view of an advert (``--adverts``)."""
    return {"type": "advert", "ts": round(a.ts, 6), "address": a.address,
            "address_type": a.address_type, "rssi": a.rssi, "kind": a.kind.value,
            "id": _hex(a.ident), "aem": _hex(a.aem), "tx_power": a.tx_power}


def sighting_json(s: Sighting) -> dict[str, Any]:
    """JSON-ready view of a sighting."""
    return {"type": "sighting", "kind": s.kind.value, "id": s.ident.hex(),
            "slot_start": s.slot_start, "first_seen": round(s.first_seen, 6),
            "last_seen": round(s.last_seen, 6), "dwell": round(s.dwell, 3), "count": s.count,
            "rssi_max": s.rssi_max, "rssi_median": s.rssi_median, "tx_power": s.tx_power,
            "proximity": s.proximity.value, "aem": _hex(s.aem)}


def count_json(c: AdoptionCount) -> dict[str, Any]:
    """JSON-ready view of an adoption count."""
    return {"type": "adoption", "window_start": c.window_start, "window_len": c.window_len,
            "bluezone": c.bluezone, "gaen": c.gaen, "other_phones": c.other_phones,
            "other_devices": c.other_devices, "overflow": c.overflow,
            "bluezone_share": None if c.bluezone_share is None else round(c.bluezone_share, 4),
            "by_kind": c.by_kind}


def _emit(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


@ble_group.command("replay")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--adverts", is_flag=True, help="Print adverts instead of sightings.")
@click.option("--counts", is_flag=True, help="Also print adoption counts per window.")
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Take proximity thresholds and window sizes from here.")
def ble_replay(file: Path, adverts: bool, counts: bool, config: Path | None) -> None:
    """Decode a btsnoop / pcapng / btmon capture; JSON lines of sightings or adverts.

    The capture's own timestamps are the clock. Sightings are printed as their ID slot ends
    in capture time; a summary goes to stderr. Adverts carry the address, address type,
    RSSI, timestamp, decoded kind and ID in hex.

    Example:

        bzgw ble replay btsnoop_hci.log --adverts
    """
    from ble.aggregator import WindowAggregator
    from ble.config import BleConfig
    from ble.replay import ReplayStats, read_adverts
    from core.clock import ReplayClock

    ble = BleConfig()
    if config is not None:
        from bzgw.config import load

        ble = load(config).ble
    stats = ReplayStats()
    epoch = ReplayClock().epoch()
    agg = WindowAggregator(ble.proximity, max_ids=ble.max_ids_per_window,
                           count_window_s=ble.count_window_s, clock=epoch)
    n = sightings = 0
    next_flush = None
    now = 0.0
    for adv in read_adverts(file, stats):
        n += 1
        now = max(now, adv.ts)
        if adverts:
            _emit(advert_json(adv))
            if not counts:
                continue
        agg.add(adv)
        if next_flush is None:
            next_flush = adv.ts + _FLUSH_EVERY_S
        elif adv.ts >= next_flush:
            sightings += _print_flush(agg.flush(adv.ts), adverts=adverts, counts=counts)
            next_flush = adv.ts + _FLUSH_EVERY_S
    sightings += _print_flush(agg.flush(now, final=True), adverts=adverts, counts=counts)
    click.echo(
        f"{file.name}: {stats.format}, {stats.records} records, {n} adverts"
        + ("" if adverts else f", {sightings} sightings")
        + (f", {stats.hci.malformed} malformed reports" if stats.hci.malformed else "")
        + (f", {stats.truncated} cut-off record(s) at the end" if stats.truncated else ""),
        err=True)


def _print_flush(out: tuple[list[Sighting], list[AdoptionCount]], *, adverts: bool,
                 counts: bool) -> int:
    sightings, windows = out
    if not adverts:
        for s in sightings:
            _emit(sighting_json(s))
    if counts:
        for c in windows:
            _emit(count_json(c))
    return len(sightings)


@ble_group.command("calibrate")
@click.option("--config", "config", required=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="Gateway config: its ble source is measured; the thresholds go to its "
                   "ble.calibration_file, else into its ble.proximity.")
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(1, 600),
              help="Measurement length at each distance.")
@click.option("--at-1m", "at_1m", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Calibrate from a capture taken at 1 m instead of live.")
@click.option("--at-2m", "at_2m", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Calibrate from a capture taken at 2 m instead of live.")
@click.option("--yes", is_flag=True, help="Do not wait for Enter between the phases.")
@click.option("--dry-run", is_flag=True, help="Print the thresholds, do not write them.")
def ble_calibrate(config: Path, seconds: float, at_1m: Path | None, at_2m: Path | None,
                  yes: bool, dry_run: bool) -> None:
    """Measure RSSI of a phone at 1 m and 2 m and write the proximity thresholds.

    Each phase listens to the configured BLE source (or replays --at-1m / --at-2m) for
    --seconds and keeps the strongest phone. "near" becomes the phone's median RSSI at 2 m;
    "medium" extends the measured fall-off to about 5 m. The result is written into the
    config's ble.calibration_file when the config names one (provisioned gateways do: the
    file survives re-provisioning), else into the config's ble.proximity with calibrated:
    true, keeping the rest of the file as it is.

    Example:

        bzgw ble calibrate --config /etc/bzgw/gateway.yaml --seconds 30
    """
    from ble.calibrate import calibrate, write_calibration_file, write_thresholds
    from ble.sources import open_source
    from ble.sources.base import AdvertSource
    from ble.sources.replay_source import ReplaySource
    from bzgw.config import load
    from core.clock import ReplayClock, SystemClock

    if (at_1m is None) != (at_2m is None):
        raise click.UsageError("give both --at-1m and --at-2m, or neither")
    cfg = load(config).ble
    captures = {"1m": at_1m, "2m": at_2m}

    def open_phase(phase: str) -> AdvertSource:
        cap = captures[phase]
        if cap is not None:
            return ReplaySource(cap, ReplayClock())
        return open_source(cfg, SystemClock())

    async def prompt(text: str) -> None:
        click.echo(text, err=True)
        if not yes:
            await asyncio.to_thread(click.prompt, "Press Enter when ready", default="",
                                    show_default=False, err=True)
        click.echo(f"measuring for {seconds:g} s...", err=True)

    result = asyncio.run(calibrate(open_phase, seconds, prompt))
    th = result.thresholds
    click.echo(json.dumps({"rssi_1m": result.rssi_1m, "rssi_2m": result.rssi_2m,
                           "samples_1m": result.samples_1m, "samples_2m": result.samples_2m,
                           "path_loss_exponent": round(result.exponent, 2),
                           "near_dbm": th.near_dbm, "medium_dbm": th.medium_dbm}))
    if dry_run:
        return
    if cfg.calibration_file is not None:
        write_calibration_file(cfg.calibration_file, result, now=time.time())
        click.echo(f"wrote the thresholds to {cfg.calibration_file} (kept across "
                   "provisioning); restart bzgw-gateway to use them", err=True)
        return
    write_thresholds(config, th)
    click.echo(f"wrote ble.proximity to {config}", err=True)



@ble_group.command("beacon")
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True,
                                                    dir_okay=False), default=None,
              help="Gateway config: its ble.beacon section (UUID, major, minor, timing).")
@click.option("--adapter", default=None, help="Adapter, e.g. hci0 (default: the config's).")
@click.option("--bursts", type=click.IntRange(min=1), default=None,
              help="Stop after this many bursts (default: until Ctrl-C).")
@click.option("--on", "on_s", type=click.FloatRange(1, 600), default=None,
              help="Seconds per burst (default: ble.beacon.on_s, 10).")
@click.option("--every", "every_s", type=click.FloatRange(30, 86400), default=None,
              help="One burst per this many seconds, 30 at least (default: ble.beacon."
                   "every_s, 300).")
def ble_beacon(config: Path | None, adapter: str | None, bursts: int | None,
               on_s: float | None, every_s: float | None) -> None:
    """Send the iBeacon that wakes sleeping iOS Bluezone apps, through BlueZ.

    Registers an LEAdvertisement1 with the adapter's LEAdvertisingManager1 (bluetoothd does
    the radio work) for a burst of --on seconds once every --every seconds, so phones that
    stay are woken again without the radio being kept busy. The daemon does the same when
    ble.beacon.enabled is true (off by default).

    Example:

        bzgw ble beacon --config /etc/bzgw/gateway.yaml --bursts 1
    """
    import msgspec

    from ble.beacon import Beacon, ibeacon_payload
    from ble.config import BleConfig
    from bzgw.config import load
    from core.errors import ConfigError

    ble = load(config).ble if config is not None else BleConfig()
    over = {k: v for k, v in (("on_s", on_s), ("every_s", every_s)) if v is not None}
    try:
        cfg = msgspec.structs.replace(ble.beacon, **over)
    except ValueError as err:
        raise ConfigError([("--on/--every", str(err).splitlines()[-1].strip())]) from err
    beacon = Beacon(cfg, adapter=adapter or ble.adapter)
    click.echo(f"iBeacon {cfg.uuid} major {cfg.major} minor {cfg.minor} "
               f"({ibeacon_payload(cfg).hex()}) on {beacon.adapter}: {cfg.on_s:g} s every "
               f"{cfg.every_s:g} s", err=True)

    async def main() -> None:
        stop = asyncio.Event()
        await beacon.open()
        try:
            await beacon.run(stop, bursts=bursts)
        finally:
            await beacon.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    s = beacon.stats
    click.echo(json.dumps({"bursts": s.bursts, "failures": s.failures,
                           "last_error": s.last_error or None}))
    if s.failures and not s.bursts:
        raise SystemExit(1)
