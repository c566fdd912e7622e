"""``bzgw qr`` commands."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.errors import BzgwError


@click.group("qr")
def qr_group() -> None:
    """QR check-in: decode images."""


@qr_group.command("decode")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
def qr_decode(images: tuple[Path, ...]) -> None:
    """Decode QR codes in images; one JSON object per line.

    Example:

        bzgw qr decode photo.png
    """
    raise BzgwError("bzgw qr decode is not available yet")
