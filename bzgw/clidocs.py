"""Generate ``docs/CLI.md`` from the real ``--help`` of every command (kept current by a test)."""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    """Every command under ``group``, depth first, sorted by name."""
    for name in sorted(group.commands):
        cmd = group.commands[name]
        path = (*prefix, name)
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from walk(cmd, path)


def render() -> str:
    """Markdown with one section per command holding its ``--help`` output."""
    from bzgw.cli import cli

    runner = CliRunner()
    out = ["# `bzgw` command reference", "",
           "Generated from `--help` by `python -m bzgw.clidocs > docs/CLI.md`; a test keeps "
           "it current.", ""]
    for path, _cmd in [((), cli), *walk(cli)]:
        res = runner.invoke(cli, [*path, "--help"], prog_name="bzgw", terminal_width=100)
        out += [f"## bzgw {' '.join(path)}".rstrip(), "", "```", res.output.rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
