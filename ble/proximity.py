"""RSSI → a coarse proximity class, from thresholds calibrated on each receiver.

RSSI is a poor ruler: antennas, bodies, walls and phone models move it by 10 dB and more, and
field studies found threshold rules near chance. So the gateway only ever reports a class
(near / medium / far), and only once the unit has been calibrated: an operator holds a phone
at 1 m and then at 2 m (``bzgw ble calibrate``). "near" means "as strong as that phone at
2 m", the seeds' "< 2 m" rule; "medium" extends the measured fall-off to about 5 m.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ble.config import ProximityThresholds
from contract.records import Proximity
from core.errors import BzgwError

MEDIUM_RANGE_M = 5.0  # the medium class ends where the fitted model puts ~5 m
MIN_SAMPLES = 5
MIN_DROP_DB = 1.0  # 2 m must read at least this much weaker than 1 m
EXPONENT_RANGE = (1.5, 4.0)  # physically plausible path-loss exponents indoors


class CalibrationError(BzgwError):
    """Calibration measurements cannot give thresholds.

    Attributes:
        fix: what the operator should do.
    """

    def __init__(self, message: str, fix: str) -> None:
        self.fix = fix
        super().__init__(f"{message}; {fix}")


def proximity_of(rssi: int | None, thresholds: ProximityThresholds) -> Proximity:
    """Class of one RSSI value (a sighting's median); UNKNOWN until calibrated."""
    if rssi is None or not thresholds.calibrated:
        return Proximity.UNKNOWN
    if rssi >= thresholds.near_dbm:
        return Proximity.NEAR
    if rssi >= thresholds.medium_dbm:
        return Proximity.MEDIUM
    return Proximity.FAR


@dataclass(frozen=True, slots=True)
class Calibration:
    """Result of a calibration.

    Attributes:
        rssi_1m: median RSSI at 1 m.
        rssi_2m: median RSSI at 2 m.
        samples_1m: adverts measured at 1 m.
        samples_2m: adverts measured at 2 m.
        exponent: path-loss exponent implied by the two medians (clamped to 1.5–4).
        thresholds: what goes into ``ble.proximity``.
    """

    rssi_1m: float
    rssi_2m: float
    samples_1m: int
    samples_2m: int
    exponent: float
    thresholds: ProximityThresholds


def compute_thresholds(at_1m: Sequence[int], at_2m: Sequence[int]) -> Calibration:
    """Thresholds from RSSI samples of one phone at 1 m and at 2 m.

    Raises:
        CalibrationError: too few samples, or 2 m not weaker than 1 m.
    """
    for label, xs in (("1 m", at_1m), ("2 m", at_2m)):
        if len(xs) < MIN_SAMPLES:
            raise CalibrationError(
                f"only {len(xs)} adverts received at {label} (need {MIN_SAMPLES})",
                "hold the phone still with its tracing app open and measure longer "
                "(--seconds)")
    m1 = float(statistics.median(at_1m))
    m2 = float(statistics.median(at_2m))
    drop = m1 - m2
    if drop < MIN_DROP_DB:
        raise CalibrationError(
            f"the phone read {m2:.0f} dBm at 2 m, not weaker than {m1:.0f} dBm at 1 m",
            "check the distances, keep people out of the line of sight and repeat")
    lo, hi = EXPONENT_RANGE
    exponent = min(hi, max(lo, drop / (10.0 * math.log10(2.0))))
    near = round(m2)
    medium = round(m1 - 10.0 * exponent * math.log10(MEDIUM_RANGE_M))
    medium = min(medium, near - 1)
    th = ProximityThresholds(near_dbm=max(-127, min(20, near)),
                             medium_dbm=max(-127, min(20, medium)), calibrated=True)
    return Calibration(m1, m2, len(at_1m), len(at_2m), exponent, th)
