"""One F0 query as the health office runs it: match, and open identities only under approval.

Used by ``bzgw match`` and the demo, so both log and refuse the same way:

1. the query is logged (who, which F0 input by digest, how many IDs);
2. with a request and approvals, each approval is logged, then checked
   (:func:`matcher.custody.open_request`); a refusal is logged with its reason and nothing is
   opened; a request already opened (in the audit log) is refused as a replay;
3. the match runs, opening co-present identities only inside the approved windows;
4. the opening is logged with what it opened, and the rebuilt keys are dropped;
5. without an opening, a new request naming the windows found is returned for the custodians.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.custody import IdentityKeys
from matcher.audit import AuditLog, entries
from matcher.custody import CustodyError, Request, make_request, open_request
from matcher.f0 import F0
from matcher.match import MatchParams, MatchResult, match_f0
from matcher.store_read import StoreReads


@dataclass
class Casework:
    """What one query produced."""

    result: MatchResult
    new_request: Request | None  # to send to the custodians (nothing was opened)


def opened_requests(audit: AuditLog) -> list[str]:
    """Ids of every request an opening has used (an approval opens once)."""
    return [str(e["data"].get("request")) for e in entries(audit.path)
            if e.get("event") == "open"]


def run_query(store: StoreReads, f0_file: Path, f0: F0, *, audit: AuditLog, actor: str,
              params: MatchParams | None = None, keys: IdentityKeys | None = None,
              request: Request | None = None,
              approvals: Sequence[Mapping[str, Any]] = ()) -> Casework:
    """Match one verified F0 input, opening identities only under k approvals.

    Raises:
        CustodyError: the request or its approvals open nothing (logged as refused).
    """
    digest = hashlib.sha256(Path(f0_file).read_bytes()).hexdigest()
    audit.append("f0_query", actor=actor, f0=digest, format=f0.format, signer=f0.signer,
                 ids=f0.n_ids, cases=len(f0.cases))
    opening = None
    if request is not None:
        for doc in approvals:
            audit.append("approval", actor=str(doc.get("custodian")), request=request.id)
        try:
            if keys is None:
                raise CustodyError("no identity keys configured (matcher -> identity_keys)")
            if request.f0 != digest:
                raise CustodyError("the request is for another F0 input")
            opening = open_request(keys, request, approvals, used=opened_requests(audit))
        except CustodyError as err:
            audit.append("refused_open", actor=actor, request=request.id, reason=str(err))
            raise
    result = match_f0(store, f0, params, opening)
    if opening is not None:
        audit.append("open", actor=actor, request=opening.request.id,
                     custodians=opening.custodians, days=opening.request.days,
                     opened=result.opened_checkins, sealed=result.sealed_checkins)
        opening.forget()
        return Casework(result, None)
    needs = any(c.needs_approval for c in result.cases)
    if not (result.sealed_checkins or needs):
        return Casework(result, None)
    label = result.cases[0].label if result.cases else Path(f0_file).stem
    return Casework(result, make_request(label, f0_file, result.opening_scope(), lookup=needs))
