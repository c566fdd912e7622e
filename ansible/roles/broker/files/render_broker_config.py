"""Render mosquitto.conf and the ACL with bzgw's generator; rewrite only what changed.

Run by the ansible `broker` role with the release's Python (so it uses the installed bzgw's
``mqtt.broker_config``, the same generator as ``bzgw broker config``). Prints one JSON object:
``{"changed": [<paths written>]}``, so repeated runs report no change.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from gateway.registry import load_registry
from mqtt.broker_config import TlsFiles, render_acl, render_conf


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def main() -> None:
    """Parse arguments, render both files, report what changed."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--cafile", type=Path, required=True)
    p.add_argument("--certfile", type=Path, required=True)
    p.add_argument("--keyfile", type=Path, required=True)
    p.add_argument("--persistence-dir", type=Path, default=None)
    p.add_argument("--run-as-root", action="store_true")
    a = p.parse_args()

    registry = load_registry(a.registry)
    a.out.mkdir(parents=True, exist_ok=True)
    acl = a.out / "acl"
    conf = a.out / "mosquitto.conf"
    changed = []
    if _write_if_changed(acl, render_acl(registry)):
        changed.append(str(acl))
    text = render_conf(port=a.port, tls=TlsFiles(a.cafile, a.certfile, a.keyfile),
                       acl_file=acl, bind=a.bind, persistence_dir=a.persistence_dir,
                       run_as_root=a.run_as_root)
    if _write_if_changed(conf, text):
        changed.append(str(conf))
    print(json.dumps({"changed": changed, "gateways": len(registry.gateways)}))


if __name__ == "__main__":
    main()
