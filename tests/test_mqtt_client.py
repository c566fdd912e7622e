"""The asyncio MQTT client against a real Mosquitto with TLS client certificates."""

from __future__ import annotations

import asyncio

import pytest

from mqtt import topics
from mqtt.client import MqttClient, MqttConnectError, MqttPublishError, Will
from mqtt.config import MqttConfig
from mqtt.lab import Lab
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


def test_last_will_is_retained_offline(lab: Lab) -> None:
    gw = lab.gateways["gw-a"].entry
    st = topics.status(gw.province, gw.venue, gw.id)

    async def main() -> tuple[str, bytes]:
        g = MqttClient(lab.gateways["gw-a"].mqtt, "gw-a", will=Will(st, b"offline"))
        await g.connect()
        await g.publish(st, b"online", retain=True)
        # Kill the socket without DISCONNECT: the broker must publish the will.
        g._paho.socket().close()  # type: ignore[union-attr]
        await asyncio.wait_for(g.disconnected.wait(), 5)
        await g.close()
        await asyncio.sleep(0.2)
        async with MqttClient(lab.matcher_mqtt["matcher"], "matcher") as m:
            await m.subscribe(topics.ALL_STATUS)
            return await _first(m)

    assert asyncio.run(main()) == (st, b"offline")
