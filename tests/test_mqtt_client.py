"""The asyncio MQTT client against a real Mosquitto with TLS client certificates."""

from __future__ import annotations

import asyncio
import json

import pytest

from bzgw.lab import Lab
from core.settings import to_plain
from mqtt import topics
from mqtt.client import MqttClient, MqttConnectError, MqttPublishError
from mqtt.config import MqttConfig
from mqtt.pki import CA, write_identity


async def _first(c: MqttClient, timeout: float = 5.0) -> tuple[str, bytes]:
    async def get() -> tuple[str, bytes]:
        async for m in c.messages():
            return m.topic, m.payload
        raise AssertionError("no message")

    return await asyncio.wait_for(get(), timeout)


def test_gateway_publishes_batch_matcher_receives_via_share(lab: Lab) -> None:
    gw = lab.gateways["gw-a"].entry

    async def main() -> tuple[str, bytes]:
        async with MqttClient(lab.matcher_mqtt["matcher"], "matcher") as m, MqttClient(
                lab.gateways["gw-a"].mqtt, "gw-a") as g:
            await m.subscribe(topics.SHARED_BATCHES)
            await g.publish(topics.batch(gw.province, gw.venue, gw.id), b"sealed")
            return await _first(m)

    assert asyncio.run(main()) == ("bz/v1/hn/cho-a/gw-a/batch", b"sealed")


def test_publish_to_other_gateways_topic_is_refused(lab: Lab) -> None:
    other = lab.gateways["gw-b"].entry

    async def main() -> None:
        async with MqttClient(lab.gateways["gw-a"].mqtt, "gw-a") as g:
            await g.publish(topics.batch(other.province, other.venue, other.id), b"x")

    with pytest.raises(MqttPublishError, match="Not authorized"):
        asyncio.run(main())


def test_certificate_from_another_ca_is_refused(lab: Lab) -> None:
    rogue = CA.create("rogue")
    key, cert = rogue.issue("gw-a")
    crt, keyp = write_identity(lab.root / "rogue", "gw-a", key, cert)
    cfg = MqttConfig(host="127.0.0.1", port=lab.broker.port, ca_file=lab.root / "pki/ca.crt",
                     cert_file=crt, key_file=keyp)

    async def main() -> None:
        async with MqttClient(cfg, "gw-a"):
            pass

    with pytest.raises(MqttConnectError):
        asyncio.run(main())


GATEWAY_SCRIPT = """
import asyncio, json, sys
from core.settings import convert
from mqtt.client import MqttClient, Will
from mqtt.config import MqttConfig

async def main():
    cfg = convert(json.loads(sys.argv[1]), MqttConfig)
    g = MqttClient(cfg, "gw-a", will=Will(sys.argv[2], b"offline"))
    await g.connect()
    await g.publish(sys.argv[2], b"online", retain=True)
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_last_will_is_retained_offline(lab: Lab) -> None:
    """A gateway that dies (power cut: SIGKILL, no DISCONNECT) is reported offline."""
    import subprocess
    import sys

    gw = lab.gateways["gw-a"].entry
    st = topics.status(gw.province, gw.venue, gw.id)
    proc = subprocess.Popen([sys.executable, "-c", GATEWAY_SCRIPT,
                             json.dumps(to_plain(lab.gateways["gw-a"].mqtt)), st],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()
        proc.wait(timeout=10)

    async def main() -> tuple[str, bytes]:
        async with MqttClient(lab.matcher_mqtt["matcher"], "matcher") as m:
            await m.subscribe(topics.ALL_STATUS)
            return await _first(m)

    assert asyncio.run(main()) == (st, b"offline")
