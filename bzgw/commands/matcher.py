"""``bzgw ids``, ``bzgw match`` and ``bzgw matcher`` commands."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ble import ids as idmod
from core.errors import BzgwError
from matcher.config import MatcherConfig

DB_HELP = ("sqlite:///path or postgresql://user@host/db[?schema=NAME&probes=N] "
           "(docs/OPERATIONS.md)")


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


def _matcher_config(config: Path | None) -> MatcherConfig | None:
    if config is None:
        return None
    from bzgw.config import load

    cfg = load(config)
    if cfg.matcher is None:
        raise BzgwError(f"{config} has no matcher section")
    return cfg.matcher


def _db_url(db: str | None, cfg: MatcherConfig | None) -> str:
    if db:
        return db
    if cfg is None:
        raise click.UsageError("give --db URL or --config FILE (with a matcher section)")
    return cfg.db


@click.command("match")
@click.option("--f0", "f0", required=True, type=click.Path(path_type=Path, exists=True,
                                                           dir_okay=False),
              help="Signed F0 input: bzgw-f0/v1 envelope (Bluezone InfoF or upload, EN TEK "
                   "JSON, identities), a file with a detached .sig, or a signed EN export "
                   "zip.")
@click.option("--config", "config", required=True,
              type=click.Path(path_type=Path, exists=True),
              help="Matcher config: database, F0 signer keys, audit log, identity keys.")
@click.option("--db", default=None, help=DB_HELP + " (default: config)")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for report.json, report.csv, report.html and exposure_venues.* "
                   "(default: report-<f0 name>-<time> under the config's reports_dir, else "
                   "here).")
@click.option("--margin", "margin_min", default=30.0, show_default=True,
              type=click.FloatRange(0, 24 * 60),
              help="Minutes around a window in which other check-ins count as co-present.")
@click.option("--request", "request_file", default=None,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="An opening request written by an earlier run (opening-request.json).")
@click.option("--approvals", "approval_files", multiple=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Custodians' approvals of --request (k distinct ones open its windows); "
                   "repeatable.")
def match(f0: Path, config: Path, db: str | None, out: Path | None, margin_min: float,
          request_file: Path | None, approval_files: tuple[Path, ...]) -> None:
    """Exposure report for a signed F0 input.

    Derives the F0's tracing IDs (or takes its identities), finds where and when it was seen,
    who else checked in there at that time, and how many other phones were around; writes
    JSON, CSV, a bilingual HTML page and the public exposure-venues list. F0 input is
    accepted only from the signers in the config.

    Who checked in is sealed for the custodians. Without approvals the report has counts and
    masked hints, and an opening request (opening-request.json) for the custodians; with
    --request and k custodians' --approvals, the identities in the approved windows are
    opened in memory and listed. Every query, approval and opening goes to the audit log.

    Example:

        bzgw match --f0 f0.json --config /etc/bzgw/matcher.yaml --out report/
    """
    import getpass
    import time

    from contract.custody import load_identity_keys
    from matcher.casework import run_query
    from matcher.custody import load_approval, load_request, save_request
    from matcher.f0 import load_f0
    from matcher.match import MatchParams
    from matcher.report import write_reports
    from matcher.serve import open_audit
    from matcher.store import open_store

    cfg = _matcher_config(config)
    assert cfg is not None
    if approval_files and request_file is None:
        raise click.UsageError("--approvals need the --request they approve")
    if request_file is not None and cfg.identity_keys is None:
        raise BzgwError(f"{config}: matcher -> identity_keys is needed to open identities")
    audit = open_audit(cfg)
    case = load_f0(f0, cfg.f0_signers, window_days=cfg.retention_days)
    keys = load_identity_keys(cfg.identity_keys) if cfg.identity_keys is not None else None
    req = load_request(request_file) if request_file is not None else None
    with open_store(_db_url(db, cfg)) as store:
        work = run_query(store, f0, case, audit=audit, actor=getpass.getuser(),
                         params=MatchParams(margin_s=margin_min * 60), keys=keys, request=req,
                         approvals=[load_approval(a) for a in approval_files])
    result = work.result
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        base = cfg.reports_dir if cfg.reports_dir else Path(".")
        out = base / f"report-{f0.stem}-{stamp}"
    files = write_reports(result, out)
    if work.new_request is not None:
        save_request(work.new_request, out / "opening-request.json")
        files["opening request"] = out / "opening-request.json"
    click.echo(f"{f0.name}: {case.format}, signed by {case.signer}, {case.n_ids:,} IDs"
               + (f", {case.skipped} unusable entries skipped" if case.skipped else ""))
    for c in result.cases:
        if c.needs_approval:
            click.echo(f"case {c.label}: identity lookup waits for the custodians' approval")
            continue
        click.echo(f"case {c.label}: {c.hits} hit(s), {len(c.windows)} window(s)"
                   + (f", {c.out_of_window} outside their time window"
                      if c.out_of_window else ""))
        for w in c.windows:
            click.echo(f"  - {w.summary()}")
    if result.opening is not None:
        click.echo(f"opened {result.opened_checkins} check-in identit(ies) under request "
                   f"{result.opening['request'][:16]} (approved by "
                   f"{', '.join(result.opening['custodians'])}); "
                   f"{result.sealed_checkins} outside the approved windows stay sealed")
    elif "opening request" in files:
        click.echo(f"{result.sealed_checkins} co-present check-in(s) sealed: custodians "
                   f"approve with `bzgw custodian approve --request "
                   f"{files['opening request']} ...`")
    for name, path in files.items():
        click.echo(f"{name:>15}: {path}")


@click.group("custodian")
def custodian_group() -> None:
    """Custodians of the identity keys: no one alone can read who checked in."""


@custodian_group.command("init")
@click.option("--name", "names", multiple=True, required=True,
              help="A custodian (health office, a second authority, …); repeat for each.")
@click.option("-k", "k", type=click.IntRange(2, 32), required=True,
              help="How many custodians must approve an opening.")
@click.option("--days", type=click.IntRange(1, 3660), default=731, show_default=True,
              help="Days of keys, from --first-day.")
@click.option("--first-day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="First UTC day of the keys (default: today).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for identity-keys.json, blind.key and one file per custodian.")
def custodian_init(names: tuple[str, ...], k: int, days: int, first_day: Any,
                   out: Path) -> None:
    """Make a period's identity and blind keys and split them among the custodians.

    Run it once, offline, with the custodians present: each takes away their own
    custodian-NAME.json (and no copy stays); identity-keys.json goes to the matcher and the
    gateways, blind.key to the gateways only.

    Example:

        bzgw custodian init --name health-office --name police \\
            --name peoples-committee -k 2 --out keys/
    """
    import calendar

    from matcher.custody import init_custody

    first = None if first_day is None else calendar.timegm(first_day.timetuple()) // 86400
    res = init_custody(list(names), k, out, first_day=first, days=days)
    click.echo(f"{len(names)} custodians, {k} needed; days {res.keys.first_day}.."
               f"{res.keys.last_day}")
    click.echo(f"  public (matcher, gateways): {res.identity_keys}")
    click.echo(f"  gateways only (secret):     {res.blind_key}")
    for name, path in res.custodians.items():
        click.echo(f"  {name} only (secret): {path}")


@custodian_group.command("approve")
@click.option("--share", "share", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="This custodian's file (custodian-NAME.json).")
@click.option("--request", "request_file", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The opening request to approve.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the signed approval.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def custodian_approve(share: Path, request_file: Path, out: Path, yes: bool) -> None:
    """Sign one opening request and add this custodian's shares of its days only.

    Shows what is asked (case, venues, windows, days) first.

    Example:

        bzgw custodian approve --share custodian-health-office.json \\
            --request opening-request.json --out approval-health.json
    """
    import json

    from core.keyfile import write_private
    from matcher.custody import approve, load_request, load_share_file

    req = load_request(request_file)
    sf = load_share_file(share)
    click.echo(req.summary())
    if not yes:
        click.confirm(f"approve as {sf.name}?", abort=True)
    doc = approve(req, sf)
    write_private(out, json.dumps(doc, indent=1).encode())
    click.echo(f"{out}: approval by {sf.name} of request {req.id[:16]} "
               f"({len(doc['shares'])} day(s))")


@custodian_group.command("list")
@click.argument("identity_keys", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def custodian_list(identity_keys: Path) -> None:
    """The custodians, how many must approve, and the days the keys cover.

    Example:

        bzgw custodian list /etc/bzgw/identity-keys.json
    """
    import time

    from contract.custody import DAY, load_identity_keys

    keys = load_identity_keys(identity_keys)
    a = time.strftime("%Y-%m-%d", time.gmtime(keys.first_day * DAY))
    b = time.strftime("%Y-%m-%d", time.gmtime(keys.last_day * DAY))
    click.echo(f"{keys.k} of {keys.n} custodians must approve; keys for {a} .. {b}")
    for c in keys.custodians:
        click.echo(f"  {c.index}. {c.name}  key {c.key[:16]}…")


@click.group("matcher")
def matcher_group() -> None:
    """The central matcher service."""


@matcher_group.command("serve")
@click.option("--config", "config", required=True, type=click.Path(path_type=Path,
                                                                   exists=True))
def matcher_serve(config: Path) -> None:
    """Subscribe to gateway batches, verify, store and ack them; keep status and health.

    Joins the shared subscription, so several processes split the load, and serves the
    provincial dashboard (matcher.dashboard_*). SIGHUP reloads the gateway registry; SIGTERM or
    Ctrl-C stops after the batch in hand.

    Example:

        bzgw matcher serve --config /etc/bzgw/matcher.yaml
    """
    from matcher.serve import serve

    cfg = _matcher_config(config)
    assert cfg is not None
    serve(cfg, config)


@matcher_group.command("status")
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True),
              default=None)
@click.option("--db", default=None, help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def matcher_status(config: Path | None, db: str | None, as_json: bool) -> None:
    """Ingest counters (stored, duplicates, every rejection reason) and gateway states.

    Example:

        bzgw matcher status --db sqlite:///var/lib/bzgw-matcher/matcher.db
    """
    import json
    import time

    from matcher.store import open_store

    with open_store(_db_url(db, _matcher_config(config))) as store:
        counters = store.counters()
        gateways = store.gateways()
        rows = store.row_counts()
    if as_json:
        click.echo(json.dumps({
            "rows": rows,
            "counters": [{"reason": c.reason, "gateway": c.gateway_id, "n": c.n}
                         for c in counters],
            "gateways": [{"id": g.gateway_id, "venue": g.venue.key, "last_seq": g.last_seq,
                          "batches": g.batches, "last_batch_at": g.last_batch_at,
                          "status": g.status, "status_at": g.status_at}
                         for g in gateways]}, indent=1))
        return
    now = time.time()
    click.echo("rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    click.echo("ingest:")
    for c in counters:
        click.echo(f"  {c.reason:<22} {c.gateway_id or '-':<24} {c.n:>10,}")
    click.echo("gateways:")
    for g in gateways:
        ago = f"{(now - g.last_batch_at) / 60:.0f} min ago" if g.last_batch_at else "never"
        click.echo(f"  {g.gateway_id:<24} {g.venue.key:<28} seq {g.last_seq:<8} last batch "
                   f"{ago}, status {g.status or '?'}")


@matcher_group.command("purge")
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True),
              default=None)
@click.option("--db", default=None, help=DB_HELP)
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Retention window (default: the config's retention_days, else 21).")
def matcher_purge(config: Path | None, db: str | None, days: float | None) -> None:
    """Delete everything older than the retention window now (serve also runs this).

    Example:

        bzgw matcher purge --config /etc/bzgw/matcher.yaml
    """
    import time

    from matcher.store import open_store

    cfg = _matcher_config(config)
    keep = days if days is not None else (cfg.retention_days if cfg else 21.0)
    with open_store(_db_url(db, cfg)) as store:
        deleted = store.purge(time.time(), keep)
    click.echo(f"kept {keep:g} days; deleted " + ", ".join(
        f"{k} {v:,}" for k, v in deleted.items()))


@matcher_group.command("sign-f0")
@click.argument("source", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--key", "key_file", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Health-authority private key (PEM, Ed25519 or ECDSA P-256).")
@click.option("--kind", type=click.Choice(["bluezone-infof", "bluezone-upload", "gaen-export",
                                           "gaen-json", "identity"]), default=None,
              help="What SOURCE is (default: detected from its content).")
@click.option("--case", default="", help="Label for reports (signed with the input).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Envelope file (default: SOURCE.signed.json; with --detached SOURCE.sig).")
@click.option("--detached", is_flag=True, help="Write SOURCE.sig and leave SOURCE as is.")
def matcher_sign_f0(source: Path, key_file: Path, kind: str | None, case: str,
                    out: Path | None, detached: bool) -> None:
    """Sign an F0 input so the matcher accepts it (health-office tooling).

    Example:

        bzgw matcher sign-f0 infof.json --key moh-f0.pem --case HN-0042
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from matcher.f0 import sign_f0

    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise BzgwError(f"{key_file}: not an unencrypted PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise BzgwError(f"{key_file}: F0 signing key must be Ed25519 or ECDSA P-256")
    dest = out or source.with_name(source.name + (".sig" if detached else ".signed.json"))
    written = sign_f0(source, key, kind=kind, case=case, detached=detached, out=dest)
    click.echo(f"signed {source} -> {written}")


@matcher_group.group("report")
def matcher_report() -> None:
    """Reports for the provincial and national level."""


@matcher_report.command("adoption")
@click.option("--db", default=None, help=DB_HELP + " (default: config)")
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True),
              default=None, help="Matcher config (its database).")
@click.option("--by", "by", type=click.Choice(["venue", "district", "province"]),
              default="district", show_default=True, help="One row per unit of this kind.")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="First day (Vietnam time, YYYY-MM-DD; default: the oldest data).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Last day, included (default: the newest data).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("."),
              show_default=True, help="Folder for adoption-BY-PERIOD.csv and .xlsx.")
def matcher_report_adoption(db: str | None, config: Path | None, by: str,
                            start: datetime | None, end: datetime | None, out: Path) -> None:
    """Bluezone installation rate per venue, district or province, as CSV and XLSX.

    Columns (Vietnamese / English): the unit, days with data, phones seen, Bluezone phones,
    EN phones and the Bluezone rate in percent. "Phones seen" counts each phone once per
    15-minute window it was heard in, not different people: see docs/OPERATIONS.md. The CSV
    is UTF-8 with a byte-order mark, so Excel shows Vietnamese text as written.

    Example:

        bzgw matcher report adoption --db sqlite:///matcher.db --by district
        --from 2021-05-01 --to 2021-05-04 --out reports/
    """
    from matcher.adoption import write_adoption_report
    from matcher.store import open_store

    d0, d1 = (start.date() if start else None), (end.date() if end else None)
    with open_store(_db_url(db, _matcher_config(config))) as store:
        rows, files = write_adoption_report(store, by, out, start=d0, end=d1)
    for r in rows:
        rate = "–" if r.rate is None else f"{r.rate:.2f} %"
        click.echo(f"  {r.unit:<36} {len(r.days):>3} day(s) {r.phones:>10,} phones seen "
                   f"{r.bluezone:>9,} Bluezone {rate:>9}")
    if not rows:
        click.echo("no adoption counts in that period", err=True)
    for kind, path in files.items():
        click.echo(f"{kind:>5}: {path}")


@click.group("audit")
def audit_group() -> None:
    """The matcher's audit log (queries, approvals, openings, logins, user changes)."""


@audit_group.command("verify")
@click.argument("log", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key", "key_file", type=click.Path(path_type=Path, exists=True,
                                                   dir_okay=False),
              default=None, help="Audit public key (hex; default: audit.pub beside the log).")
def audit_verify(log: Path, key_file: Path | None) -> None:
    """Check every entry's signature, the hash chain and the head: a changed, removed or
    reordered entry is reported with its line; exit status 1 then.

    Example:

        bzgw audit verify /var/lib/bzgw-matcher/audit.log
    """
    from matcher.audit import AuditError, load_audit_public, verify

    public = load_audit_public(key_file or log.with_name("audit.pub"))
    if not log.exists() and not log.with_name(log.name + ".head").exists():
        raise BzgwError(f"{log}: no such audit log")
    head, problems = verify(log, public)
    if problems:
        raise AuditError(problems)
    click.echo(f"{log}: OK, {head.seq} entries, head {head.hash[:16]}")


@audit_group.command("show")
@click.argument("log", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N.")
def audit_show(log: Path, last: int | None) -> None:
    """Print the entries, one line each (time, event, actor, data).

    Example:

        bzgw audit show /var/lib/bzgw-matcher/audit.log --last 20
    """
    import json
    import time

    from matcher.audit import entries

    rows = entries(log)
    for e in rows[-last:] if last else rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.get("ts", 0)))
        click.echo(f"{e.get('seq'):>6} {when}Z {e.get('event'):<13} {e.get('actor')}: "
                   f"{json.dumps(e.get('data'), ensure_ascii=False)}")


def _add_user_commands() -> None:
    from bzgw.commands.users import user_group

    matcher_group.add_command(user_group)


_add_user_commands()
