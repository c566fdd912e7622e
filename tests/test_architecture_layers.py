"""The layers of docs/ARCHITECTURE.md, held against the imports of every module.

Rules, by top-level package: the capture stages (``ble``, ``qr``) import neither each other
nor ``mqtt``, ``gateway``, ``matcher`` or the shell; ``mqtt`` imports neither ``gateway``,
``matcher`` nor the shell; ``matcher`` imports neither ``gateway`` nor ``qr``; ``gateway`` does
not import ``matcher``; the neutral packages (``core``, ``contract``) import no stage, and
``core`` not even ``contract``; nothing but ``bench/`` and ``tests/`` imports the shell (the
package of the ``bzgw`` console script); no import cycle between top-level packages.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"ble", "qr", "gateway", "mqtt", "matcher"}
NEUTRAL = {"core", "contract"}


def shell_package(root: Path) -> str:
    m = re.search(r'^\s*bzgw\s*=\s*"([A-Za-z_]\w*)', (root / "pyproject.toml").read_text(), re.M)
    assert m, "pyproject.toml names no bzgw console script"
    return m.group(1)


def packages(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()
            and p.name not in {"tests", "bench"}}


def imports(root: Path, pkg: str) -> Iterator[tuple[str, int, str]]:
    """``(file, line, imported top-level package)`` for every absolute import in ``pkg``."""
    for f in sorted((root / pkg).rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield str(f.relative_to(root)), node.lineno, a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield str(f.relative_to(root)), node.lineno, node.module.split(".")[0]


def broken_rules(root: Path) -> list[str]:
    """Every import that breaks a rule, and every cycle; empty when the layers hold."""
    pkgs = packages(root)
    shell = shell_package(root)
    never: dict[str, set[str]] = {
        "ble": {"qr", "mqtt", "gateway", "matcher"},
        "qr": {"ble", "mqtt", "gateway", "matcher"},
        "mqtt": {"gateway", "matcher", "ble", "qr"},
        "matcher": {"gateway", "qr"},
        "gateway": {"matcher"},
        "core": STAGES | {"contract"},
        "contract": set(STAGES),
    }
    bad: list[str] = []
    edges: dict[str, set[str]] = {p: set() for p in pkgs}
    for pkg in sorted(pkgs):
        forbidden = never.get(pkg, set()) | ({shell} if pkg != shell else set())
        for file, line, target in imports(root, pkg):
            if target not in pkgs or target == pkg:
                continue
            edges[pkg].add(target)
            if target in forbidden:
                bad.append(f"{file}:{line}: {pkg} imports {target}")

    def reach(a: str) -> set[str]:
        seen: set[str] = set()
        stack = [a]
        while stack:
            for b in edges[stack.pop()]:
                if b not in seen:
                    seen.add(b)
                    stack.append(b)
        return seen

    bad += [f"cycle between {a} and {b}" for a in sorted(pkgs) for b in sorted(edges[a])
            if a < b and a in reach(b)]
    return bad


def test_layer_rules_hold_for_every_import() -> None:
    assert shell_package(ROOT) == "bzgw"
    assert {"gateway", "ble", "qr", "mqtt", "matcher", "core", "contract", "bzgw"} <= packages(ROOT)
    assert broken_rules(ROOT) == []


def _copy_tree(dst: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for pkg in packages(ROOT):
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))


@pytest.mark.parametrize(("where", "planted", "expected"), [
    ("ble/__init__.py", "import matcher\n", "ble/__init__.py:1: ble imports matcher"),
    ("qr/records.py", "from ble.records import Advert\n", "qr imports ble"),
    ("contract/codec.py", "from gateway import outbox\n", "contract imports gateway"),
    ("core/errors.py", "import contract.records\n", "core imports contract"),
    ("mqtt/topics.py", "from bzgw.cli import main\n", "mqtt imports bzgw"),
])
def test_a_planted_import_breaks_the_layer_test(tmp_path: Path, where: str, planted: str,
                                                expected: str) -> None:
    _copy_tree(tmp_path)
    f = tmp_path / where
    f.write_text(planted + f.read_text())
    problems = broken_rules(tmp_path)
    assert any(expected in p for p in problems), problems


def test_a_cycle_between_packages_is_reported(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "matcher" / "_planted.py").write_text("import bzgw.cli\n")
    problems = broken_rules(tmp_path)
    assert "cycle between bzgw and matcher" in problems, problems


def test_the_simulator_and_capture_stages_load_without_the_matcher() -> None:
    # The device side must not pull in the matcher (numpy process pools, PostgreSQL drivers):
    # the simulator derives IDs with ble.ids, the per-key reference.
    import subprocess
    import sys
    code = ("import sys, ble.simulator, ble.aggregator, qr.checkin, gateway.pipeline, "
            "mqtt.sync\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('matcher', 'bzgw'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
