"""Gateway-side commands: ``demo``, ``run``, ``bench``, ``enroll``, ``outbox``."""

from __future__ import annotations

from pathlib import Path

import click

from core.errors import BzgwError


@click.command("demo")
@click.option("--capture", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Feed a real capture (btsnoop/pcapng/btmon, of any date) instead of the "
                   "simulator; check-ins are placed within its time span.")
@click.option("--qr-dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="QR images to check in instead of generated ones.")
@click.option("--f0", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="F0 file (Bluezone InfoF JSON or GAEN export) to match.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for report.json / report.html and the demo state: new, empty, "
                   "or made by an earlier demo (only its own files are replaced).")
@click.option("--seed", default=7, show_default=True, help="Simulator seed.")
def demo(capture: Path | None, qr_dir: Path | None, f0: Path | None, out: Path | None,
         seed: int) -> None:
    """Run the whole pipeline locally and write an exposure report.

    Simulated crowd + QR images → sealed outbox → local Mosquitto (mTLS) → matcher on
    SQLite → exposure report. Every process it starts is stopped at the end, also on Ctrl-C.

    Example:

        bzgw demo --out /tmp/bzgw-demo

        bzgw demo --capture market.btsnoop --f0 f0.json --out /tmp/bzgw-capture
    """
    from bzgw.demo import run_demo

    run_demo(capture=capture, qr_dir=qr_dir, f0=f0, out=out, seed=seed)


@click.command("run")
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
def run(config: Path) -> None:
    """Run the gateway daemon (capture, seal, buffer, sync).

    Example:

        bzgw run --config /etc/bzgw/gateway.yaml
    """
    from bzgw.config import load
    from gateway.daemon import run_daemon

    run_daemon(load(config))


@click.command("bench")
@click.option("--only", multiple=True, help="Run only benchmarks whose name contains this.")
@click.option("--json", "as_json", type=click.Path(path_type=Path), default=None,
              help="Also write the results as JSON here.")
@click.option("--quick", is_flag=True, help="Smaller workloads (smoke run).")
def bench(only: tuple[str, ...], as_json: Path | None, quick: bool) -> None:
    """Run the benchmarks in bench/ and print a table (and JSON).

    Example:

        bzgw bench --only ble
    """
    from bzgw.benchrun import main

    main(only, as_json, quick)


class _EnrollGroup(click.Group):
    """``bzgw enroll``: its control-node subcommands (CA init, signing, which live with the
    rest of enrolment and its X.509 imports) are attached on first look-up, so importing this
    module for ``bzgw run`` does not load them."""

    _attached = False

    def _attach(self) -> None:
        if not self._attached:
            self._attached = True
            from gateway.enroll import register_ca_commands

            register_ca_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._attach()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._attach()
        return super().list_commands(ctx)


@click.group("enroll", cls=_EnrollGroup, invoke_without_command=True)
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False),
              help="Gateway (or matcher) config naming the key, CSR and certificate paths.")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Instead of --config: keep device.key, tls.key, tls.csr, tls.crt here.")
@click.option("--id", "identity", default=None,
              help="Certificate CN (default: gateway.id from --config).")
@click.option("--csr-out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Where to write the CSR (default: next to the TLS key).")
@click.option("--no-signing-key", is_flag=True,
              help="TLS identity only (matcher, broker): no Ed25519 sealing key.")
@click.option("--install-cert", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Install this signed certificate (after checking it).")
@click.option("--ca", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="The provincial CA certificate it must chain to.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_context
def enroll(ctx: click.Context, config: Path | None, state_dir: Path | None,
           identity: str | None, csr_out: Path | None, no_signing_key: bool,
           install_cert: Path | None, ca: Path | None, as_json: bool) -> None:
    """Device side of enrolment: make the key, write a CSR, install the signed certificate.

    Creates the Ed25519 signing key and the TLS key if missing (mode 0600), writes a CSR with
    CN = gateway id and prints the signing public key (hex) for the registry. Private keys
    never leave this host. With --install-cert, checks that the certificate matches the TLS
    key and chains to --ca, then installs both. Safe to repeat.

    Example:

        bzgw enroll --config /etc/bzgw/gateway.yaml --csr-out /tmp/gw.csr

        bzgw enroll --config gateway.yaml --install-cert gw.crt --ca ca.crt
    """
    if ctx.invoked_subcommand is not None:
        return
    from gateway.enroll import run_device_enroll

    run_device_enroll(config=config, state_dir=state_dir, identity=identity, csr_out=csr_out,
                      no_signing_key=no_signing_key, install_cert=install_cert, ca=ca,
                      as_json=as_json)


@click.group("outbox")
def outbox_group() -> None:
    """Inspect the sealed-batch outbox."""


@outbox_group.command("status")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None)
@click.option("--db", type=click.Path(path_type=Path), default=None, help="Outbox file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def outbox_status(config: Path | None, db: Path | None, as_json: bool = False) -> None:
    """Depth, oldest batch, bytes and dropped counts.

    Reads the outbox without changing it, also while the gateway runs.

    Example:

        bzgw outbox status --config /etc/bzgw/gateway.yaml
        bzgw outbox status --db /var/lib/bzgw/outbox.db --json
    """
    import datetime as dt
    import json
    import time

    from gateway.outbox import read_status

    if (config is None) == (db is None):
        raise BzgwError("give exactly one of --config FILE or --db PATH")
    if db is None:
        from bzgw.config import load

        assert config is not None
        db = load(config).outbox.path
    st = read_status(db)
    if as_json:
        click.echo(json.dumps({"path": str(db), **st.to_dict()}, indent=2))
        return
    oldest = "-"
    if st.oldest_created_at is not None:
        age = max(0.0, time.time() - st.oldest_created_at)
        when = dt.datetime.fromtimestamp(st.oldest_created_at, dt.UTC)
        oldest = f"{when:%Y-%m-%d %H:%M:%S}Z ({age / 3600:.1f} h ago)"
    rows = [("outbox", str(db)), ("depth", f"{st.depth} batches"),
            ("bytes", f"{st.bytes:,}"), ("oldest", oldest),
            ("dropped", f"{st.dropped_batches} batches ({st.dropped_bytes:,} bytes)"),
            ("rejected", str(st.rejected)), ("acked", str(st.acked)),
            ("next seq", str(st.next_seq))]
    for k, v in rows:
        click.echo(f"{k:<10}{v}")
