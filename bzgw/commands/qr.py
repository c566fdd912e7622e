"""``bzgw qr`` commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click


@click.group("qr")
def qr_group() -> None:
    """QR check-in: decode images."""


def decode_file(path: Path, decoder: Any, recognizer: Any) -> dict[str, Any]:
    """One ``bzgw qr decode`` result line for one image."""
    from qr.decoder import load_image
    from qr.records import Rejected

    try:
        gray = load_image(path)
    except (OSError, ValueError) as err:
        return {"file": str(path), "error": f"cannot read image: {err}"}
    result = decoder.decode(gray)
    codes = []
    for code in result.codes:
        got = recognizer.classify(code, ts=time.time())
        entry: dict[str, Any] = {"text": code.text, "format": code.format,
                                 "kind": got.kind.value if got.kind else None}
        if isinstance(got, Rejected):
            entry["rejected"] = got.reason
        codes.append(entry)
    out: dict[str, Any] = {"file": str(path), "codes": codes}
    if result.undecodable and not codes:
        out["unreadable_symbols"] = result.undecodable
    return out


@qr_group.command("decode")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False),
              help="Gateway config whose qr section gives the keys and trust list.")
@click.option("--budget-ms", type=float, default=None,
              help="Per-image decode budget (default: the config's frame_budget_ms).")
def qr_decode(images: tuple[Path, ...], config: Path | None, budget_ms: float | None) -> None:
    """Decode QR codes in images; one JSON object per line.

    Each line is {"file": …, "codes": [{"text": …, "format": …, "kind": …}]}; a refused code
    also has "rejected" (the reason). An unreadable image gives a line with "error"; the exit
    status is non-zero only when every image failed.

    Example:

        bzgw qr decode photo.png
    """
    from qr.config import QrConfig
    from qr.decoder import Decoder
    from qr.recognizers import Recognizer

    cfg = QrConfig()
    if config is not None:
        from bzgw.config import load

        cfg = load(config).qr
    decoder = Decoder(budget_ms=budget_ms if budget_ms is not None else cfg.frame_budget_ms,
                      zbar=cfg.zbar)
    recognizer = Recognizer.from_config(cfg)
    failed = 0
    for path in images:
        line = decode_file(path, decoder, recognizer)
        failed += "error" in line
        click.echo(json.dumps(line, ensure_ascii=False))
    if failed == len(images):
        raise click.exceptions.Exit(1)
