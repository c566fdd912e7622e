"""``bzgw demo``: the whole system on embedded defaults, in well under a minute.

A simulated crowd at two venues (or a real capture) and a few QR check-ins go through the same
code as a deployed gateway: decode → per-ID window sightings → sealed batches → SQLite outbox →
a Mosquitto started here (TLS, client certificates, generated ACLs) → the matcher (verify,
store in SQLite, ack) → an F0 built from one simulated phone's Bluezone daily key → exposure
report with co-present check-ins masked (identities are sealed for three custodians) → two of
the three custodians approve the opening request → the report with the co-present identities
of the approved windows. The matcher's audit log is left in ``state/matcher/audit.log``. Every
process started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ble.aggregator import WindowAggregator
from ble.config import ProximityThresholds
from ble.records import Advert
from bzgw.lab import Lab, make_lab
from contract.custody import IdentitySealer, day_of
from contract.registry import GatewayEntry
from contract.sealing import Sealer, generate_matcher_keypair, save_matcher_keypair
from core.clock import ReplayClock
from core.errors import BzgwError
from gateway.outbox import Outbox
from gateway.pipeline import CapturePipeline

DAY = 86400
DEMO_MARKER = ".bzgw-demo"
CUSTODIANS = ("health-office", "police", "peoples-committee")
CUSTODY_DAYS = 30  # days of identity keys the demo makes, from the day before its timeline
VENUES = [
    {"id": "gw-hn-0001", "province": "hn", "district": "hoan-kiem", "venue": "cho-dong-xuan",
     "venue_name": "Chợ Đồng Xuân"},
    {"id": "gw-hn-0002", "province": "hn", "district": "hoang-mai", "venue": "ben-xe-giap-bat",
     "venue_name": "Bến xe Giáp Bát"},
]
PEOPLE = [  # made-up people for the generated CCCD check-in codes
    {"cccd": "001085012345", "old_id": "012345678", "name": "Nguyễn Văn An",
     "birth_date": "12031985",
     "gender": "Nam", "address": "12 Hàng Đào, Hoàn Kiếm, Hà Nội", "issued": "01072021"},
    {"cccd": "001190054321", "old_id": "", "name": "Trần Thị Bình", "birth_date": "05111990",
     "gender": "Nữ", "address": "45 Giải Phóng, Hoàng Mai, Hà Nội", "issued": "15032021"},
    {"cccd": "034078009876", "old_id": "151234567", "name": "Lê Quang Cường",
     "birth_date": "23071978",
     "gender": "Nam", "address": "Thôn 3, Vũ Thư, Thái Bình", "issued": "20042021"},
]


class Progress:
    """Numbered steps with timings on stderr."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.t0 = time.monotonic()
        self._t = self.t0

    def step(self, text: str) -> None:
        """Start a new step."""
        self.n += 1
        click.echo(click.style(f"[{self.n}/{self.total}] ", bold=True) + text, err=True)
        self._t = time.monotonic()

    def done(self, text: str) -> None:
        """Report the end of the step."""
        click.echo(f"      {text} ({time.monotonic() - self._t:.1f} s)", err=True)


@dataclass
class Site:
    """One demo venue with its gateway pipeline."""

    entry: GatewayEntry
    outbox: Outbox
    pipeline: CapturePipeline
    clock: ReplayClock


def _utc_midnight(t: float) -> int:
    return int(t) // DAY * DAY


def _make_site(lab: Lab, gid: str, state: Path, matcher_pub: bytes, start: float,
               custody: Path) -> Site:
    lg = lab.gateways[gid]
    (state / gid).mkdir(parents=True, exist_ok=True)
    blind = state / gid / "blind.key"
    shutil.copy2(custody / "blind.key", blind)  # each gateway moves its own copy forward
    identities = IdentitySealer.from_files(custody / "identity-keys.json", blind)
    clock = ReplayClock(start)
    outbox = Outbox(state / gid / "outbox.db", max_bytes=64 * 1024 * 1024,
                    max_age_s=21 * DAY, clock=clock)
    sealer = Sealer(gateway_id=gid, matcher_public_key=matcher_pub, signing_key=lg.signing_key)
    agg = WindowAggregator(ProximityThresholds(near_dbm=-68, medium_dbm=-80, calibrated=True),
                           max_ids=20000, count_window_s=900)
    pipe = CapturePipeline(aggregator=agg, sealer=sealer, outbox=outbox, clock=clock,
                           flush_interval_s=300, identities=identities)
    return Site(lg.entry, outbox, pipe, clock)


def _feed(site: Site, adverts: Iterator[Advert]) -> int:
    n = 0
    for adv in adverts:
        site.clock.advance(adv.ts)
        site.pipeline.on_advert(adv)
        n += 1
    return n


def _checkins(site: Site, images: list[Path], times: list[float]) -> tuple[int, int]:
    """Decode and recognise QR images at the given capture times; seal accepted ones."""
    from qr.bzgwqr import load_checkin_keys
    from qr.decoder import Decoder, load_image
    from qr.recognizers import Recognizer
    from qr.records import Rejected

    key = next((p for p in images if p.name == "bzgw-checkin-key.pem"), None)
    images = [p for p in images if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    decoder = Decoder()
    recognizer = Recognizer(checkin_keys=load_checkin_keys(key) if key else None)
    accepted = rejected = 0
    for path, ts in zip(images, times, strict=False):
        site.clock.advance(ts)
        result = decoder.decode(load_image(path))
        if not result.codes:
            rejected += 1
            continue
        for code in result.codes:
            got = recognizer.recognize(code, ts=ts, clock=site.clock.epoch())
            if isinstance(got, Rejected):
                rejected += 1
                continue
            site.pipeline.on_checkin(got)
            accepted += 1
    return accepted, rejected


async def _sync_all(lab: Lab, sites: list[Site], store: Any, private_key: bytes,
                    timeout: float = 60.0) -> None:
    """Run the matcher service and every gateway's sync until all outboxes are empty."""
    from matcher.service import MatcherService
    from mqtt.sync import GatewaySync

    stop = asyncio.Event()
    service = MatcherService(store=store, registry=lab.registry, private_key=private_key,
                             mqtt=lab.matcher_mqtt["matcher"], client_id="matcher")
    tasks = [asyncio.create_task(service.run(stop), name="matcher")]
    deadline = time.monotonic() + timeout
    try:
        # A shared subscription drops what is published before a matcher subscribes; a
        # gateway would resend only after its ack timeout (a minute): gateways start after.
        while not service.subscribed.is_set():
            if time.monotonic() > deadline:
                raise BzgwError("the matcher did not subscribe in time: see "
                                + str(lab.broker.log))
            _raise_failed(tasks)
            await asyncio.sleep(0.02)
        for s in sites:
            sync = GatewaySync(s.outbox, lab.gateways[s.entry.id].mqtt, _identity(s.entry),
                               health=None, health_interval_s=3600)
            tasks.append(asyncio.create_task(sync.run(stop), name=f"sync {s.entry.id}"))
        while any(s.outbox.status().depth for s in sites):
            if time.monotonic() > deadline:
                raise BzgwError("sync did not finish in time: see " + str(lab.broker.log))
            _raise_failed(tasks)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def _raise_failed(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise BzgwError(f"{t.get_name()} failed: {t.exception()}")


def _identity(entry: GatewayEntry) -> Any:
    from gateway.config import IdentityConfig

    return IdentityConfig(id=entry.id, province=entry.province, district=entry.district,
                          venue=entry.venue, venue_name=entry.venue_name)


def run_demo(*, capture: Path | None, qr_dir: Path | None, f0: Path | None, out: Path | None,
             seed: int) -> None:
    """Run the demo; see the module docstring."""
    if capture is not None and f0 is None:
        raise BzgwError("--capture needs --f0 (the F0 file to match against the capture)")
    out = (out or Path("bzgw-demo")).resolve()
    state = _fresh_state(out)
    try:
        asyncio.run(_demo(out, state, capture=capture, qr_dir=qr_dir, f0=f0, seed=seed))
    except KeyboardInterrupt:
        click.echo("interrupted: every process the demo started has been stopped", err=True)
        raise


def _fresh_state(out: Path) -> Path:
    """``out/state`` emptied for a new run, deleting only what an earlier demo created.

    A marker file says the folder is the demo's; a folder without it that holds anything is
    refused rather than cleaned, so a mistyped ``--out`` (a home folder, a project) is safe.
    """
    marker = out / DEMO_MARKER
    if out.exists() and not out.is_dir():
        raise BzgwError(f"--out {out} is a file: give a folder")
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise BzgwError(f"--out {out} holds files the demo did not create: give a new or "
                        "empty folder (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by bzgw demo: state/ and the report files here are replaced on "
                      "the next run\n")
    state = out / "state"
    if state.exists():
        shutil.rmtree(state)
    state.mkdir()
    return state


def _capture_start(capture: Path) -> float:
    """Time of the first advert in ``capture`` (the demo's clock starts there)."""
    from ble.replay import read_adverts

    first = next(iter(read_adverts(capture)), None)
    if first is None:
        raise BzgwError(f"{capture}: no advertising reports in this capture")
    return first.ts


async def _demo(out: Path, state: Path, *, capture: Path | None, qr_dir: Path | None,
                f0: Path | None, seed: int) -> None:
    from core.keyfile import write_private
    from matcher.audit import AuditLog
    from matcher.casework import run_query
    from matcher.custody import approve, init_custody, load_share_file, save_request
    from matcher.f0 import Signer, key_id, load_f0, sign_f0
    from matcher.report import write_reports
    from matcher.store import open_store
    from qr.samples import make_sample_images

    p = Progress(6)
    p.step("Keys and a local broker: CA, broker, 2 gateways, matcher, health authority, "
           f"{len(CUSTODIANS)} custodians")
    private, public = generate_matcher_keypair()
    save_matcher_keypair(private, public, state / "matcher" / "matcher.key",
                         state / "matcher" / "matcher.pub")
    authority = Ed25519PrivateKey.generate()
    day0 = _utc_midnight(time.time()) - DAY  # yesterday, UTC
    start, end = float(day0 + 8 * 3600), float(day0 + 11 * 3600)
    if capture is not None:  # a capture of any date: its own timeline
        start = _capture_start(capture)
    custody = init_custody(list(CUSTODIANS), 2, state / "custodians",
                           first_day=day_of(start) - 1, days=CUSTODY_DAYS)
    with make_lab(state / "site", VENUES, matchers=("matcher",)) as lab:
        p.done(f"Mosquitto on 127.0.0.1:{lab.broker.port} with TLS client certificates and "
               f"ACLs; identities sealed for 2 of {len(CUSTODIANS)} custodians")
        a, b = VENUES[0]["venue"], VENUES[1]["venue"]
        sites = [_make_site(lab, v["id"], state, public, start, state / "custodians")
                 for v in VENUES]
        f0_file = state / "f0.json"
        if capture is None:
            from ble.simulator import Crowd, Visit

            p.step("Simulated crowd at 2 venues, 08:00-11:00 UTC yesterday")
            crowd = Crowd(seed=seed, start=start, duration_s=end - start)
            case = crowd.add_bluezone_phone([
                Visit(a, start + 1800, start + 4200, distance_m=1.2),
                Visit(b, start + 7200, start + 9600, distance_m=3.0)])
            crowd.add_bluezone_phones(40, [a, b])
            crowd.add_iphones(8, [a, b])
            crowd.add_en_phones(15, [a, b])
            crowd.add_background(30, [a, b])
            n = sum(_feed(s, crowd.adverts(s.entry.venue, start, end, rate_hz=0.5))
                    for s in sites)
            p.done(f"{n:,} adverts from {len(crowd.devices)} devices decoded and aggregated")
            infof = {"data": [{"daily_key": case.daily_key(day0).hex(), "time_start": day0,
                               "time_end": day0 + DAY - 1, "max": 96}]}
            f0_file.write_text(json.dumps(infof))
            qr_times: list[float] = [start + 2000.0, start + 2600, start + 3900, start + 9000]
        else:
            from ble.replay import read_adverts

            p.step(f"Replaying {capture.name} at {sites[0].entry.venue_name}")
            n = _feed(sites[0], read_adverts(capture))
            p.done(f"{n:,} adverts decoded and aggregated")
            assert f0 is not None  # checked by run_demo
            shutil.copy(f0, f0_file)
            # Check-ins spread over the capture's span, so some fall while its phones were there.
            span = sites[0].clock.now() - start
            qr_times = [start + span * i / 5 for i in range(1, 5)]

        p.step("QR check-ins at the door")
        if qr_dir is None:
            make_sample_images(state / "qr", PEOPLE, now=start)
        images = sorted((qr_dir or state / "qr").iterdir())
        times = (qr_times * (len(images) // len(qr_times) + 1))[:len(images)]
        acc, rej = _checkins(sites[0], images, times)
        for s in sites:
            s.pipeline.flush(final=True)
        depth = sum(s.outbox.status().depth for s in sites)
        p.done(f"{acc} accepted, {rej} unreadable or rejected; {depth} sealed batches in the "
               "outboxes")

        p.step("Sync over MQTT (TLS) to the matcher: verify, store, ack")
        store = open_store(f"sqlite:///{state / 'matcher' / 'matcher.db'}")
        await _sync_all(lab, sites, store, private)
        p.done("every batch acknowledged by the matcher and removed from the outboxes")

    p.step("F0 (signed by the health authority) and exposure report, identities sealed")
    signed = sign_f0(f0_file, authority, case="F0-demo", out=state / "f0.signed.json")
    pub = authority.public_key()
    case_f0 = load_f0(signed, [Signer(key_id(pub), pub, "demo health authority")])
    audit = AuditLog.open(state / "matcher" / "audit.log", state / "matcher" / "audit.key")
    first = run_query(store, signed, case_f0, audit=audit, actor="demo-officer")
    sealed_files = write_reports(first.result, out / "sealed-report")
    p.done(f"{case_f0.n_ids:,} F0 IDs derived and matched; "
           f"{first.result.sealed_checkins} co-present check-in(s) masked")

    p.step(f"Custodians approve the opening ({CUSTODIANS[0]}, {CUSTODIANS[1]}: 2 of "
           f"{len(CUSTODIANS)})")
    opened = first
    if first.new_request is not None:
        request = first.new_request
        save_request(request, out / "sealed-report" / "opening-request.json")
        approvals = []
        for name in CUSTODIANS[:2]:
            doc = approve(request, load_share_file(custody.custodians[name]))
            write_private(state / "custodians" / f"approval-{name}.json",
                          json.dumps(doc).encode())
            approvals.append(doc)
        opened = run_query(store, signed, case_f0, audit=audit, actor="demo-officer",
                           keys=custody.keys, request=request, approvals=approvals)
    files = write_reports(opened.result, out)
    store.close()
    p.done(f"{opened.result.opened_checkins} identit(ies) opened in the approved windows; "
           f"audit log {state / 'matcher' / 'audit.log'} ({audit.head.seq} entries)")
    _summary(opened.result, {**files, "sealed report": sealed_files["html"]},
             time.monotonic() - p.t0)


def _summary(result: Any, files: dict[str, Path], elapsed: float) -> None:
    from matcher.report import local

    windows = result.windows
    click.echo("")
    click.echo(f"F0 was present in {len(windows)} venue window(s):")
    for w in windows:
        others = sum(w.other_ids.values())
        click.echo(f"  - {w.venue.label}: {local(w.start)} - {local(w.end)} (UTC+7), "
                   f"dwell {w.dwell_s / 60:.0f} min, {w.proximity}, via {'+'.join(w.via)}; "
                   f"{len(w.co_present)} co-present check-in(s), {others} other phone ID(s)")
        for c in w.co_present:
            shown = c.masked if not c.opened else f"{c.masked} (opened: see the report)"
            click.echo(f"      {local(c.ts)} {c.kind}: {shown}")
    click.echo("")
    for kind, path in files.items():
        click.echo(f"{kind.replace('_', ' '):>12}: {path}")
    click.echo(f"done in {elapsed:.1f} s")
    with contextlib.suppress(KeyError):
        click.echo(f"\nOpen {files['html']} in a browser to read the report.")
