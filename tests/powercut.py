"""Simulated power cuts: files keep only what was synced (see ``native/powercut.c``).

:func:`build_shim` compiles the LD_PRELOAD library; a process started with
:func:`shim_env` records, at every ``fsync``/``fdatasync`` of a file under the folder, that
file's content as its durable image; :func:`cut_power` then puts every file back to its
durable image (or empties it if it was never synced), as a disk that loses its whole volatile
cache would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "native" / "powercut.c"


def build_shim(out: Path) -> Path:
    """Compile the shim into ``out`` (a folder); returns the ``.so``.

    Raises:
        FileNotFoundError: no C compiler.
        subprocess.CalledProcessError: it did not compile.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise FileNotFoundError("no C compiler (cc) to build the power-cut shim")
    so = out / "powercut.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(so), str(SOURCE),
                    "-ldl"], check=True, capture_output=True, text=True)
    return so


def shim_env(so: Path, folder: Path) -> dict[str, str]:
    """Environment for a child whose files under ``folder`` are tracked."""
    pre = os.environ.get("LD_PRELOAD", "")
    return {**os.environ, "LD_PRELOAD": f"{so} {pre}".strip(),
            "POWERCUT_DIR": str(folder.resolve())}


def cut_power(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` back to what its last sync left (the writer must be dead).

    Returns bytes lost per file name (current size minus durable size; a rewritten page
    counts as 0 here but is reverted all the same).
    """
    lost: dict[str, int] = {}
    for f in sorted(folder.iterdir()):
        if f.name.endswith((".durable", ".durable.tmp")) or not f.is_file():
            continue
        durable = f.with_name(f.name + ".durable")
        size = f.stat().st_size
        if durable.exists():
            shutil.copyfile(durable, f)
        else:  # created but never synced: the name may survive, the content does not
            f.write_bytes(b"")
        lost[f.name] = size - f.stat().st_size
    for tmp in folder.glob("*.durable.tmp"):
        tmp.unlink()
    return lost
