"""The decoder stack against real photos (zxing's black-box QR sets, in the shared corpora).

Counts only: speed is measured in bench/bench_qr.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qr.decoder import Decoder, ZbarQrReader, ZxingReader, fit_within, load_image
from qr.records import DecodedCode


def corpus_images(corpora: Path) -> list[tuple[str, np.ndarray, bytes]]:
    items = []
    for png in sorted((corpora / "qr").glob("*/*.png")):
        expected = png.with_suffix(".txt").read_bytes()  # exact payload as UTF-8 bytes
        items.append((f"{png.parent.name}/{png.name}",
                      fit_within(load_image(png), 640, 480), expected))
    return items


def test_combined_decoder_reads_more_than_either_alone(corpora: Path) -> None:
    items = corpus_images(corpora)
    assert len(items) >= 100
    try:
        zbar = ZbarQrReader()
    except ImportError:
        pytest.skip("ZBar is not installed (libzbar0)")
    zxing = ZxingReader()
    combined = Decoder(budget_ms=1000)

    def hits(read: Callable[[np.ndarray], list[DecodedCode]]) -> set[str]:
        return {name for name, gray, exp in items
                if any(c.text.encode("utf-8") == exp for c in read(gray))}

    only_zxing = hits(lambda g: zxing.read(g)[0])
    only_zbar = hits(zbar.read)
    both = hits(lambda g: combined.decode(g).codes)
    print(f"corpus {len(items)}: zxing {len(only_zxing)}, zbar {len(only_zbar)}, "
          f"combined {len(both)}")
    assert len(both) > len(only_zxing)
    assert len(both) > len(only_zbar)
    # Nothing either reader gets alone is lost by combining them.
    assert only_zxing <= both and only_zbar <= both
