"""``bzgw ble`` commands."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.errors import BzgwError


@click.group("ble")
def ble_group() -> None:
    """BLE capture: replay captures, calibrate proximity."""


@ble_group.command("replay")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--adverts", is_flag=True, help="Print adverts instead of sightings.")
def ble_replay(file: Path, adverts: bool) -> None:
    """Decode a btsnoop / pcapng / btmon capture; JSON lines of sightings or adverts.

    Example:

        bzgw ble replay btsnoop_hci.log --adverts
    """
    raise BzgwError("bzgw ble replay is not available yet")


@ble_group.command("calibrate")
def ble_calibrate() -> None:
    """Measure RSSI of a phone at 1 m and 2 m and write the proximity thresholds.

    Example:

        bzgw ble calibrate --config /etc/bzgw/gateway.yaml
    """
    raise BzgwError("bzgw ble calibrate is not available yet")
