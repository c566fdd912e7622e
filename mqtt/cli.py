"""``bzgw broker`` commands."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("broker")
def broker_group() -> None:
    """Broker (Mosquitto) configuration."""


@broker_group.command("config")
@click.option("--registry", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--out", required=True, type=click.Path(path_type=Path))
def broker_config(registry: Path, out: Path) -> None:
    """Write mosquitto.conf and the ACL file from the gateway registry.

    Example:

        bzgw broker config --registry registry.yaml --out /etc/mosquitto/conf.d/
    """
    from gateway.errors import BzgwError

    raise BzgwError("bzgw broker config is not available yet")
