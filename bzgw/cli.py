"""The ``bzgw`` command: one entry point into every stage.

Each package contributes its own commands (``ble.cli``, ``qr.cli``, ``mqtt.cli``,
``matcher.cli``); this module assembles them and turns :class:`BzgwError` into one line on
stderr with exit status 1, or 78 (EX_CONFIG) when the problem is the configuration.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import click

from core.errors import BzgwError, ConfigError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bzgw")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


EXIT_CONFIG = 78  # sysexits.h EX_CONFIG; the systemd units list it in RestartPreventExitStatus=


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # looked up only when asked: importlib.metadata (and the email package) cost ~1 MB of
    # resident memory in every `bzgw run`
    if value and not ctx.resilient_parsing:
        click.echo(f"bzgw, version {_version()}")
        ctx.exit()


class BzgwGroup(click.Group):
    """Group that reports product errors as one line and exit status 1 (78 for an invalid
    config, which a restart cannot fix)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            for loc, msg in err.problems:
                click.echo(f"error: {loc}: {msg}" if loc else f"error: {msg}", err=True)
            ctx.exit(EXIT_CONFIG)
        except BzgwError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(1)
        return None


@click.group(cls=BzgwGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the version and exit.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Venue gateway for contact tracing (Bluezone, Exposure Notification, QR check-ins).

    Example:

        bzgw demo
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.group("config")
def config_group() -> None:
    """Validate configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def config_check(file: Path) -> None:
    """Validate a config file; errors name the line, the key and what was expected.

    Example:

        bzgw config check /etc/bzgw/gateway.yaml
    """
    from bzgw.config import load

    cfg = load(file)
    sections = [name for name in ("gateway", "sealing", "mqtt", "matcher")
                if getattr(cfg, name) is not None]
    click.echo(f"{file}: OK ({', '.join(sections) or 'defaults only'})")


class _LazyCommands(dict[str, Any]):
    """Subcommands imported on first use, so ``bzgw run`` never loads what only the matcher,
    the demo or enrolment need (numpy, X.509, PostgreSQL drivers): less memory on the Pi."""

    def __getitem__(self, name: str) -> Any:
        cmd = super().__getitem__(name)
        if isinstance(cmd, str):
            module, attr = cmd.split(":")
            cmd = getattr(importlib.import_module(module), attr)
            super().__setitem__(name, cmd)
        return cmd

    def get(self, name: str, default: Any = None) -> Any:
        # dict.get would hand out the unimported "module:attr" string
        return self[name] if name in self else default  # noqa: SIM401


def _register() -> None:
    # Imported on use so `bzgw --help` stays fast and a broken optional stage cannot break others.
    lazy = _LazyCommands(cli.commands)
    gw, m = "bzgw.commands.gateway", "bzgw.commands.matcher"
    lazy.update({"demo": f"{gw}:demo", "run": f"{gw}:run", "bench": f"{gw}:bench",
                 "enroll": f"{gw}:enroll", "outbox": f"{gw}:outbox_group",
                 "ble": "bzgw.commands.ble:ble_group", "qr": "bzgw.commands.qr:qr_group",
                 "ids": f"{m}:ids_group", "match": f"{m}:match", "matcher": f"{m}:matcher_group",
                 "audit": f"{m}:audit_group", "custodian": f"{m}:custodian_group",
                 "broker": "bzgw.commands.mqtt:broker_group"})
    cli.commands = lazy
    config_lazy = _LazyCommands(config_group.commands)
    config_lazy["staff-pin"] = "bzgw.commands.users:staff_pin"
    config_group.commands = config_lazy


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="bzgw")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # `python -m bzgw.cli`, used by tests to run the real process
    main()
