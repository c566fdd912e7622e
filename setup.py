"""Optional Cython build of the hot BLE modules (everything else is in pyproject.toml).

``ble/decoders.py`` and ``ble/aggregator.py`` are compiled, from the same source, into
``ble._decoders_c`` and ``ble._aggregator_c`` (see ``ble/compiled.py``). The build is best
effort, as bluetooth-data-tools' is: without Cython or a C compiler, or with
``BZGW_PURE_PYTHON=1``, the package installs as pure Python and runs the same code.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT = {"ble._decoders_c": "ble/decoders.py", "ble._aggregator_c": "ble/aggregator.py"}


class OptionalBuildExt(build_ext):
    """Build what compiles; a failed extension leaves its module pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - no compiler: pure Python
            print(f"bzgw: compiled BLE modules not built ({err}); using pure Python",
                  file=sys.stderr)

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001 - this module stays pure Python
            print(f"bzgw: {getattr(ext, 'name', ext)} not compiled ({err})", file=sys.stderr)


def _extensions() -> list[Any]:
    if os.environ.get("BZGW_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        return []
    extensions = []
    for name, src in HOT.items():  # one by one: a module that does not translate stays pure
        try:
            extensions += cythonize([Extension(name, [src])],
                                    compiler_directives={"language_level": "3"}, quiet=True)
        except Exception as err:  # noqa: BLE001 - Cython could not translate it
            print(f"bzgw: {name} not compiled ({err}); using pure Python", file=sys.stderr)
    return extensions


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
