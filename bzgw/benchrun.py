"""``bzgw bench``: discover ``bench/bench_*.py`` and run them.

Each benchmark module exposes ``run(quick: bool) -> list[dict]``; every dict has ``name``,
``value`` and ``unit`` and, where an alternative was measured in the same run, ``vs`` (its
name), ``vs_value`` and ``ratio``.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import click

from core.errors import BzgwError


def bench_dir() -> Path:
    """``bench/`` beside the packages (source checkout or editable install)."""
    here = Path(__file__).resolve().parent.parent / "bench"
    if not here.is_dir():
        raise BzgwError(f"benchmarks not found at {here}: run from a source checkout")
    return here


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_benches(only: tuple[str, ...], quick: bool) -> list[dict[str, Any]]:
    """Import and run every selected benchmark; progress goes to stderr."""
    root = bench_dir()
    results: list[dict[str, Any]] = []
    files = sorted(root.glob("bench_*.py"))
    if only:
        files = [f for f in files if any(o in f.stem for o in only)]
    if not files:
        raise BzgwError(f"no benchmark matches {', '.join(only)}" if only else
                        f"no bench_*.py in {root}")
    sys.path.insert(0, str(root))
    for f in files:
        click.echo(f"running {f.stem} ...", err=True)
        spec = importlib.util.spec_from_file_location(f.stem, f)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f.stem] = mod  # dataclasses in a bench module look their module up here
        spec.loader.exec_module(mod)
        t0 = time.perf_counter()
        rows = mod.run(quick)
        for r in rows:
            r.setdefault("bench", f.stem)
        results.extend(rows)
        click.echo(f"  {f.stem}: {len(rows)} results in {time.perf_counter() - t0:.1f} s",
                   err=True)
    return results


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain text table of results."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v) if v is not None else ""

    head = ["benchmark", "value", "unit", "vs", "vs value", "ratio"]
    body = [[r.get("name", ""), fmt(r.get("value")), r.get("unit", ""), r.get("vs", ""),
             fmt(r.get("vs_value")), fmt(r.get("ratio"))] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
             for row in [head, *body]]
    return "\n".join(lines)


def main(only: tuple[str, ...], as_json: Path | None, quick: bool) -> None:
    """Run, print the table, optionally write JSON."""
    rows = run_benches(only, quick)
    click.echo(format_table(rows))
    if as_json is not None:
        as_json.write_text(json.dumps({"machine": machine(), "quick": quick, "results": rows},
                                      indent=1, default=str))
        click.echo(f"wrote {as_json}", err=True)
