"""Compiled copies of the hot BLE modules, with the pure-Python source as the fallback.

``ble.decoders`` and ``ble.aggregator`` are plain Python. When the package is built with
Cython (``setup.py``; bluetooth-data-tools and habluetooth ship the same way), each is also
compiled from the very same source into ``ble._<name>_c``, and the pure module swaps in the
compiled definitions at the end of its import. The compiled copy is skipped, and the pure
code runs, when:

* ``BZGW_PURE_PYTHON=1`` is set (the tests run both ways), or
* there is no compiled copy (a platform without a compiler), or
* the source is newer than the compiled copy (an edited checkout not yet rebuilt: running
  stale compiled code would silently ignore the edit).
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PURE_ENV = "BZGW_PURE_PYTHON"


def adopt(namespace: dict[str, Any], compiled: str) -> bool:
    """Replace ``namespace`` (a pure module's globals) with the compiled module's names.

    Args:
        namespace: ``globals()`` of the pure module, which holds ``__file__``.
        compiled: dotted name of the compiled copy.

    Returns:
        Whether the compiled copy is now in use.
    """
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return False
    spec = find_spec(compiled)
    if spec is None or spec.origin is None:
        return False
    source = Path(namespace["__file__"])
    try:
        stale = source.stat().st_mtime > Path(spec.origin).stat().st_mtime
    except OSError:
        return False
    if stale:
        log.warning("%s is newer than its compiled copy %s: running the pure-Python code "
                    "(rebuild with `pip install -e .`)", source.name, Path(spec.origin).name)
        return False
    mod = importlib.import_module(compiled)
    namespace.update({k: v for k, v in vars(mod).items()
                      if not (k.startswith("__") and k.endswith("__"))})
    namespace["COMPILED"] = True
    return True
