"""``bzgw ble calibrate``: measure a phone at 1 m and 2 m, write ``ble.proximity``.

Each phase collects RSSI from an advert source for a number of seconds of *source* time (so
a replayed capture or a simulated crowd calibrates exactly like the live radio). The phone
being held is taken to be the strongest phone-like sender of the phase: samples are grouped
by tracing ID when there is one (IDs outlive address rotations) and otherwise by address,
in memory only.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path

from ble.config import ProximityThresholds
from ble.proximity import MIN_SAMPLES, Calibration, compute_thresholds
from ble.sources.base import AdvertSource
from contract.records import IdKind
from core.errors import ConfigError

PHONE_KINDS = frozenset({IdKind.BLUEZONE, IdKind.BLUEZONE_IOS, IdKind.GAEN, IdKind.APPLE,
                         IdKind.PHONE})


async def collect_rssi(source: AdvertSource, seconds: float, *,
                       wall_limit_s: float | None = None) -> dict[object, list[int]]:
    """RSSI samples per sender over ``seconds`` of the source's own time.

    Args:
        source: where adverts come from (closed when done).
        seconds: measurement length, in advert timestamps.
        wall_limit_s: give up waiting after this much real time (default ``2·seconds+10``).

    Returns:
        Samples keyed by tracing ID, or by address for adverts without one.
    """
    out: dict[object, list[int]] = {}
    first: float | None = None
    limit = wall_limit_s if wall_limit_s is not None else 2 * seconds + 10
    try:
        async with asyncio.timeout(limit):
            async for adv in source:
                if first is None:
                    first = adv.ts
                if adv.ts - first >= seconds:
                    break
                if adv.rssi is None or adv.kind not in PHONE_KINDS:
                    continue
                key: object = adv.ident if adv.ident is not None else adv.address
                out.setdefault(key, []).append(adv.rssi)
    except TimeoutError:
        pass  # a quiet radio: judge what arrived
    finally:
        await source.close()
    return out


def strongest(samples: dict[object, list[int]]) -> list[int]:
    """The samples of the strongest sender with enough adverts (empty if none has)."""
    best: list[int] = []
    best_median = -1000.0
    for xs in samples.values():
        if len(xs) >= MIN_SAMPLES:
            m = float(statistics.median(xs))
            if m > best_median:
                best, best_median = xs, m
    return best


async def calibrate(open_phase: Callable[[str], AdvertSource], seconds: float,
                    prompt: Callable[[str], Awaitable[None]]) -> Calibration:
    """Run both phases and compute thresholds.

    Args:
        open_phase: gives a fresh source for phase ``"1m"`` and ``"2m"``.
        seconds: length of each phase.
        prompt: tells the operator where to hold the phone; returns when they are ready.

    Raises:
        CalibrationError: too few adverts or 2 m not weaker than 1 m.
    """
    phases: dict[str, list[int]] = {}
    for phase, text in (("1m", "1 m"), ("2m", "2 m")):
        await prompt(f"Hold the phone {text} from the gateway's antenna, at chest height, "
                     "with its tracing app open.")
        phases[phase] = strongest(await collect_rssi(open_phase(phase), seconds))
    return compute_thresholds(phases["1m"], phases["2m"])


def write_thresholds(config: Path, thresholds: ProximityThresholds) -> None:
    """Set ``ble.proximity`` in a YAML config, keeping its other content and comments.

    Raises:
        ConfigError: the file cannot be read or written, or is not a mapping.
    """
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.comments import CommentedMap

    yaml = YAML()  # round-trip mode: comments, order and quoting survive
    try:
        data = yaml.load(config.read_text(encoding="utf-8")) if config.exists() else None
    except (OSError, YAMLError) as err:
        raise ConfigError([(str(config), f"cannot read config: {err}")]) from err
    if data is None:
        data = CommentedMap()
    if not isinstance(data, dict):
        raise ConfigError([(f"{config}:1", "the config must be a mapping of sections")])
    ble = data.get("ble")
    if ble is None:
        ble = data["ble"] = CommentedMap()
    if not isinstance(ble, dict):
        raise ConfigError([(str(config), "ble: must be a mapping")])
    prox = ble.get("proximity")
    if not isinstance(prox, dict):
        prox = ble["proximity"] = CommentedMap()
    prox["near_dbm"] = thresholds.near_dbm
    prox["medium_dbm"] = thresholds.medium_dbm
    prox["calibrated"] = thresholds.calibrated
    tmp = config.with_name(config.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            yaml.dump(data, fh)
        tmp.replace(config)  # atomic: a crash leaves the old file, never half a file
    except OSError as err:
        raise ConfigError([(str(config), f"cannot write config: {err.strerror}")]) from err


def write_calibration_file(path: Path, result: Calibration, *, now: float) -> None:
    """Write this unit's thresholds into their own file (``ble.calibration_file``).

    The provisioning role renders ``gateway.yaml`` from the inventory and never touches this
    file, so a measurement survives every re-provisioning; the gateway reads it at start.

    Raises:
        ConfigError: the file cannot be written.
    """
    from datetime import UTC, datetime

    import yaml

    th = result.thresholds
    doc = {"proximity": {"near_dbm": th.near_dbm, "medium_dbm": th.medium_dbm,
                         "calibrated": th.calibrated},
           "measured": {"at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
                        "rssi_1m": result.rssi_1m, "rssi_2m": result.rssi_2m,
                        "samples_1m": result.samples_1m, "samples_2m": result.samples_2m,
                        "path_loss_exponent": round(result.exponent, 2)}}
    text = ("# Written by `bzgw ble calibrate` on this unit: its proximity thresholds.\n"
            "# Provisioning does not touch this file; run the calibration again to change it.\n"
            + yaml.safe_dump(doc, sort_keys=False))
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)  # the gateway's service user reads it
        tmp.replace(path)  # atomic: a crash leaves the old file, never half a file
    except OSError as err:
        raise ConfigError([(str(path), f"cannot write calibration: {err.strerror}")]) from err
