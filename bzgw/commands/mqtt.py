"""``bzgw broker`` commands."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("broker")
def broker_group() -> None:
    """Broker (Mosquitto) configuration."""


@broker_group.command("config")
@click.option("--registry", required=True, type=click.Path(path_type=Path, exists=True,
                                                           dir_okay=False),
              help="Gateway registry (YAML).")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder to write mosquitto.conf and acl into.")
@click.option("--port", default=8883, show_default=True, type=click.IntRange(1, 65535),
              help="TLS listener port.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Listener address.")
@click.option("--ca", default="/etc/mosquitto/certs/ca.crt", show_default=True,
              help="CA certificate path on the broker host.")
@click.option("--cert", default="/etc/mosquitto/certs/broker.crt", show_default=True,
              help="Broker certificate path on the broker host.")
@click.option("--key", default="/etc/mosquitto/certs/broker.key", show_default=True,
              help="Broker key path on the broker host.")
@click.option("--crl", default=None, help="CRL path on the broker host (revoked devices).")
@click.option("--persistence-dir", default="/var/lib/mosquitto", show_default=True,
              help="Broker state folder; empty for no persistence.")
@click.option("--log-file", default=None, help="Broker log file (default: stderr/journald).")
@click.option("--acl-path", default=None,
              help="Where the ACL file will be on the broker host (default: OUT/acl).")
@click.option("--run-as-root", is_flag=True,
              help="Keep mosquitto running as root (containers without a mosquitto user).")
def broker_config(registry: Path, out: Path, port: int, bind: str, ca: str, cert: str,
                  key: str, crl: str | None, persistence_dir: str, log_file: str | None,
                  acl_path: str | None, run_as_root: bool) -> None:
    """Write mosquitto.conf and the ACL file from the gateway registry.

    TLS only, client certificates required, certificate CN as user name; each gateway may
    write only its own topics and read only its own acks; matchers read every batch through
    the shared subscription $share/matchers/bz/v1/+/+/+/batch and write acks.

    Example:

        bzgw broker config --registry registry.yaml --out /etc/mosquitto/conf.d/
    """
    from contract.registry import load_registry
    from mqtt.broker_config import TlsFiles, write_broker_config

    reg = load_registry(registry)
    conf, acl = write_broker_config(
        reg, out, port=port, bind=bind,
        tls=TlsFiles(Path(ca), Path(cert), Path(key), Path(crl) if crl else None),
        persistence_dir=Path(persistence_dir) if persistence_dir else None,
        log_file=Path(log_file) if log_file else None,
        acl_path=Path(acl_path) if acl_path else None, run_as_root=run_as_root)
    click.echo(f"wrote {conf} and {acl}: {len(reg.gateways)} gateways, "
               f"{len(reg.matchers)} matchers, TLS listener {bind}:{port}")
