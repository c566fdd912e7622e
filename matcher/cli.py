"""``bzgw ids``, ``bzgw match`` and ``bzgw matcher`` commands."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.errors import BzgwError
from matcher import ids as idmod


def _hex(value: str, n: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError as err:
        raise click.BadParameter(f"{what} must be hex") from err
    if len(raw) != n:
        raise click.BadParameter(f"{what} must be {n} bytes ({2 * n} hex digits), got {len(raw)}")
    return raw


@click.group("ids")
def ids_group() -> None:
    """Derive tracing IDs from keys (Bluezone daily keys, EN TEKs)."""


@ids_group.command("bluezone")
@click.option("--daily-key", required=True, help="32-byte daily key, hex.")
@click.option("--start", "start", required=True, type=int,
              help="UTC midnight of that key, epoch s.")
@click.option("--end", "end", required=True, type=int, help="last slot start to emit, epoch s.")
@click.option("--max", "max_ids", default=idmod.BLUEZONE_DEFAULT_MAX, show_default=True,
              type=click.IntRange(1, 86400), help="IDs per day.")
def ids_bluezone(daily_key: str, start: int, end: int, max_ids: int) -> None:
    """Print ``slot_start_epoch id_hex`` for every Bluezone ID in the window.

    Example:

        bzgw ids bluezone --daily-key 4C52...1084 --start 1596844800 --end 1596866400
    """
    dk = _hex(daily_key, 32, "--daily-key")
    if end < start:
        raise click.BadParameter("--end must not be before --start")
    try:
        rows = idmod.bluezone_ids(dk, start, end, max_ids)
        click.echo("\n".join(f"{t} {i.hex().upper()}" for t, i in rows))
    except ValueError as err:
        raise BzgwError(str(err)) from err


@ids_group.command("gaen")
@click.option("--tek", required=True, help="16-byte Temporary Exposure Key, hex.")
@click.option("--start-interval", required=True, type=click.IntRange(0, 2**32 - 1),
              help="ENIntervalNumber of the key's first interval (unix time / 600).")
@click.option("--count", default=idmod.EN_ROLLING_PERIOD, show_default=True,
              type=click.IntRange(1, 100000), help="intervals to derive.")
def ids_gaen(tek: str, start_interval: int, count: int) -> None:
    """Print ``interval rpi_hex`` for each Rolling Proximity Identifier of a TEK.

    Example:

        bzgw ids gaen --tek 75c734c6dd1a782de7a965da5eb93125 --start-interval 2642976
    """
    key = _hex(tek, 16, "--tek")
    rpis = idmod.en_rpis(key, start_interval, count)
    click.echo("\n".join(f"{start_interval + j} {r.hex()}" for j, r in enumerate(rpis)))


@click.command("match")
@click.option("--f0", "f0", required=True, type=click.Path(path_type=Path, exists=True),
              help="F0 input (Bluezone InfoF JSON, GAEN export zip, identity JSON).")
@click.option("--db", default=None, help="sqlite:///path or postgresql://... (default: config)")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="folder for report.json, report.csv, report.html")
def match(f0: Path, db: str | None, config: Path | None, out: Path | None) -> None:
    """Exposure report for an F0 input.

    Example:

        bzgw match --f0 f0.json --db sqlite:///matcher.db --out report/
    """
    raise BzgwError("bzgw match is not available yet")


@click.group("matcher")
def matcher_group() -> None:
    """The central matcher service."""


@matcher_group.command("serve")
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
def matcher_serve(config: Path) -> None:
    """Subscribe to gateway batches, verify, store and ack them.

    Example:

        bzgw matcher serve --config /etc/bzgw/matcher.yaml
    """
    raise BzgwError("bzgw matcher serve is not available yet")
