"""The one byte form of a JSON document that is signed or hashed.

Sorted keys, no whitespace, UTF-8 as is, no NaN: the audit log's entries and heads, and the
custodians' requests and approvals, are signed and checked over exactly these bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """``doc`` in its canonical bytes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()
