"""``bzgw matcher user add|disable|passwd|list`` and ``bzgw config staff-pin``."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from core.errors import BzgwError
from matcher.config import MatcherConfig

CONFIG_HELP = "Matcher config: its users_db, audit_log and audit_key are used."


def _cfg(config: Path) -> MatcherConfig:
    from bzgw.config import load

    cfg = load(config)
    if cfg.matcher is None:
        raise BzgwError(f"{config} has no matcher section")
    return cfg.matcher


def _actor() -> str:
    """Who ran the command, for the audit log (the operating-system account)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:?"


def _password(stdin: bool, what: str = "Password") -> str:
    if stdin:
        line = sys.stdin.readline()
        if not line:
            raise BzgwError("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    return str(click.prompt(what, hide_input=True, confirmation_prompt=True))


def _audited(cfg: MatcherConfig, event: str, **data: object) -> None:
    from matcher.audit import AuditLog

    AuditLog.open(cfg.audit_log, cfg.audit_key).append(event, actor=_actor(), **data)


@click.group("user")
def user_group() -> None:
    """Dashboard users: roles viewer, health_officer, admin (docs/OPERATIONS.md)."""


@user_group.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["viewer", "health_officer", "admin"]),
              help="viewer: dashboards; health_officer: also match reports; admin: also "
                   "users.")
@click.option("--config", "config", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False), help=CONFIG_HELP)
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (no prompt).")
def user_add(name: str, role: str, config: Path, password_stdin: bool) -> None:
    """Create a dashboard user; asks for the password twice (at least 12 characters).

    The change is written to the audit log. The first admin is made this way on the
    matcher host; the matcher need not be stopped.

    Example:

        bzgw matcher user add lan.nguyen --role admin --config /etc/bzgw/matcher.yaml
    """
    from matcher.users import UserStore, check_name

    cfg = _cfg(config)
    check_name(name)
    with UserStore(cfg.users_db) as users:
        if users.get(name) is not None:
            raise BzgwError(f"user {name!r} exists already (bzgw matcher user passwd changes "
                            "a password)")
        user = users.add(name, role, _password(password_stdin))
    _audited(cfg, "user_add", user=user.name, role=user.role)
    click.echo(f"added {user.name} ({user.role}) to {cfg.users_db}")


@user_group.command("disable")
@click.argument("name")
@click.option("--config", "config", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False), help=CONFIG_HELP)
def user_disable(name: str, config: Path) -> None:
    """Disable a user: no more logins; their open sessions end at their next request.

    Example:

        bzgw matcher user disable lan.nguyen --config /etc/bzgw/matcher.yaml
    """
    from matcher.users import UserStore

    cfg = _cfg(config)
    with UserStore(cfg.users_db) as users:
        user = users.disable(name)
    _audited(cfg, "user_disable", user=user.name, role=user.role)
    click.echo(f"disabled {user.name}")


@user_group.command("passwd")
@click.argument("name")
@click.option("--config", "config", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False), help=CONFIG_HELP)
@click.option("--enable", is_flag=True, help="Also re-enable a disabled user.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (no prompt).")
def user_passwd(name: str, config: Path, enable: bool, password_stdin: bool) -> None:
    """Set a user's password; their open sessions end.

    Example:

        bzgw matcher user passwd lan.nguyen --config /etc/bzgw/matcher.yaml
    """
    from matcher.users import UserStore

    cfg = _cfg(config)
    with UserStore(cfg.users_db) as users:
        if users.get(name) is None:
            raise BzgwError(f"no user {name!r} (bzgw matcher user add creates one)")
        user = users.set_password(name, _password(password_stdin, "New password"),
                                  enable=enable)
    _audited(cfg, "user_passwd", user=user.name, enabled=enable)
    click.echo(f"password of {user.name} changed" + (", enabled" if enable else ""))


@user_group.command("list")
@click.option("--config", "config", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False), help=CONFIG_HELP)
def user_list(config: Path) -> None:
    """List users: name, role, state, last change.

    Example:

        bzgw matcher user list --config /etc/bzgw/matcher.yaml
    """
    import time

    from matcher.users import UserStore

    cfg = _cfg(config)
    with UserStore(cfg.users_db) as users:
        rows = users.list()
    for u in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(u.changed_at))
        click.echo(f"{u.name:<24} {u.role:<15} {'disabled' if u.disabled else 'active':<9} "
                   f"{when}Z")
    if not rows:
        click.echo("no users")


@click.command("staff-pin")
@click.option("--pin-stdin", is_flag=True,
              help="Read the PIN from the first line of standard input (no prompt).")
def staff_pin(pin_stdin: bool) -> None:
    """Hash a staff PIN (6-12 digits) for the gateway's ``status.staff_pin_hash``.

    The status page shows venue staff the working state and counts; the last check-ins
    (masked) only after this PIN is entered. Prints the line to put in the config; the
    PIN itself is stored nowhere.

    Example:

        bzgw config staff-pin
    """
    from core.auth import hash_secret

    pin = (sys.stdin.readline().strip() if pin_stdin else
           str(click.prompt("Staff PIN", hide_input=True, confirmation_prompt=True)).strip())
    if not (pin.isascii() and pin.isdigit() and 6 <= len(pin) <= 12):
        raise BzgwError("the staff PIN must be 6 to 12 digits")
    click.echo("status:")
    click.echo(f"  staff_pin_hash: '{hash_secret(pin)}'")
