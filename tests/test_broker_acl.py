"""The generated Mosquitto config and ACL, enforced by a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from ackmatcher import Site, running, until
from click.testing import CliRunner

import mqtt.client
from bzgw.lab import Lab
from contract.ack import ack_payload
from contract.registry import Registry
from core.errors import ConfigError
from mqtt import topics
from mqtt.broker import MosquittoProcess, free_port
from mqtt.broker_config import render_acl
from mqtt.client import Message, MqttClient, MqttConnectError, MqttPublishError
from mqtt.config import MqttConfig
from mqtt.pki import CA, write_identity

A = ("hn", "cho-a", "gw-a")
B = ("hn", "ben-xe-b", "gw-b")


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


async def collect(client: MqttClient, into: list[Message]) -> None:
    async for m in client.messages():
        into.append(m)


class Listening:
    """``async with Listening(cfg, name, topic...)``: a client recording what it receives."""

    def __init__(self, cfg: MqttConfig, name: str, *subs: str) -> None:
        self.client = MqttClient(cfg, name)
        self.subs = subs
        self.got: list[Message] = []

    async def __aenter__(self) -> Listening:
        await self.client.connect()
        for t in self.subs:
            await self.client.subscribe(t)
        self._task = asyncio.create_task(collect(self.client, self.got))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()


# ---------------------------------------------------------------- who may connect


def test_client_without_certificate_is_refused(lab: Lab,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = lab.gateways["gw-a"].mqtt

    def no_cert(c: MqttConfig) -> ssl.SSLContext:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(c.ca_file))

    monkeypatch.setattr(mqtt.client, "tls_context", no_cert)

    async def go() -> None:
        with pytest.raises(MqttConnectError):
            await MqttClient(cfg, "gw-a").connect(timeout=5)

    run(go)
    assert "certificate" in lab.broker.tail(50)


def test_certificate_from_another_ca_is_refused(lab: Lab, tmp_path: Path) -> None:
    rogue = CA.create("rogue CA")
    k, c = rogue.issue("gw-a")
    crt, key = write_identity(tmp_path / "rogue", "gw-a", k, c)
    cfg = msgspec.structs.replace(lab.gateways["gw-a"].mqtt, cert_file=crt, key_file=key)

    async def go() -> None:
        with pytest.raises(MqttConnectError):
            await MqttClient(cfg, "gw-a").connect(timeout=5)

    run(go)
    assert "certificate verify failed" in lab.broker.tail(50)


def _check_plain_tcp_refused(port: int) -> None:
    """Fail unless something listens on ``port`` and refuses a plain (non-TLS) MQTT client."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    # The broker must be listening (a refused TCP connect would prove nothing): a plain
    # MQTT CONNECT reaches it and is answered by no CONNACK, only a TLS alert or a close.
    connect = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 1]) + b"p"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(connect)
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(4096):
                got += chunk
    assert not got.startswith(b"\x20")  # no CONNACK
    assert got == b"" or got[0] == 0x15  # nothing, or a TLS alert record

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="plain", protocol=paho.MQTTv5)
    results: list[object] = []
    c.on_connect = lambda *a: results.append(a[3])
    c.connect("127.0.0.1", port, 5)  # raises if nothing listens
    try:
        for _ in range(50):
            c.loop(0.05)
    finally:
        c.disconnect()
    assert not any(not getattr(rc, "is_failure", True) for rc in results)


def test_plain_tcp_is_refused(lab: Lab) -> None:
    _check_plain_tcp_refused(lab.broker.port)


def test_plain_tcp_check_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        _check_plain_tcp_refused(port)


# ---------------------------------------------------------------- what each may do


def test_gateway_writes_only_its_own_topics(lab: Lab) -> None:
    async def go() -> None:
        async with Listening(lab.matcher_mqtt["matcher"], "matcher", topics.ALL_BATCHES,
                             topics.ALL_STATUS) as m:
            async with MqttClient(lab.gateways["gw-a"].mqtt, "gw-a") as a:
                await a.publish(topics.batch(*A), b"own")
                await a.publish(topics.status(*A), b"own status", retain=True)
                for foreign in (topics.batch(*B), topics.status(*B), topics.ack(*A),
                                "bz/v1/hn/cho-a/gw-a/other", "anything"):
                    with pytest.raises(MqttPublishError, match="Not authorized"):
                        await a.publish(foreign, b"forged")
            await until(lambda: len(m.got) >= 2)
            await asyncio.sleep(0.3)
        assert sorted(x.payload for x in m.got) == [b"own", b"own status"]

    run(go)


def test_gateway_reads_only_its_own_acks(lab: Lab) -> None:
    async def go() -> None:
        async with Listening(lab.gateways["gw-a"].mqtt, "gw-a", topics.ack(*A),
                             topics.ack(*B), topics.ALL_BATCHES, "#") as a, \
                Listening(lab.gateways["gw-b"].mqtt, "gw-b", topics.ack(*B)) as b, \
                MqttClient(lab.matcher_mqtt["matcher"], "matcher") as m, \
                MqttClient(lab.gateways["gw-b"].mqtt, "gw-b-pub") as bpub:
            await m.publish(topics.ack(*B), ack_payload(7, "stored", matcher_time=1.0))
            await m.publish(topics.ack(*A), ack_payload(8, "stored", matcher_time=1.0))
            await bpub.publish(topics.batch(*B), b"b's batch")
            await until(lambda: len(b.got) == 1 and len(a.got) >= 1)
            await asyncio.sleep(0.3)
        assert {x.topic for x in a.got} == {topics.ack(*A)}  # overlapping subs: twice
        assert [x.topic for x in b.got] == [topics.ack(*B)]

    run(go)


def test_unregistered_name_from_our_ca_can_do_nothing(lab: Lab) -> None:
    cfg = lab.client_config("intruder")

    async def go() -> None:
        async with Listening(lab.matcher_mqtt["matcher"], "matcher", topics.ALL_BATCHES) as m, \
                Listening(cfg, "intruder", "#", topics.ack(*A)) as i:
            for t in (topics.batch(*A), topics.ack(*A)):
                with pytest.raises(MqttPublishError, match="Not authorized"):
                    await i.client.publish(t, b"x")
            async with MqttClient(lab.gateways["gw-a"].mqtt, "gw-a") as a:
                await a.publish(topics.batch(*A), b"real")
            await until(lambda: len(m.got) == 1)
            await asyncio.sleep(0.3)
            assert i.got == []

    run(go)


def test_matchers_cannot_publish_batches(lab: Lab) -> None:
    async def go() -> None:
        async with MqttClient(lab.matcher_mqtt["matcher"], "matcher") as m:
            with pytest.raises(MqttPublishError, match="Not authorized"):
                await m.publish(topics.batch(*A), b"forged batch")

    run(go)


def test_two_matchers_split_batches_through_the_shared_subscription(lab: Lab) -> None:
    async def go() -> None:
        async with Listening(lab.matcher_mqtt["matcher"], "matcher",
                             topics.SHARED_BATCHES) as m1, \
                Listening(lab.matcher_mqtt["matcher-2"], "matcher-2",
                          topics.SHARED_BATCHES) as m2, \
                MqttClient(lab.gateways["gw-a"].mqtt, "gw-a") as a:
            sent = [f"batch-{i}".encode() for i in range(40)]
            for p in sent:
                await a.publish(topics.batch(*A), p)
            await until(lambda: len(m1.got) + len(m2.got) == 40)
            await asyncio.sleep(0.2)
        one, two = {x.payload for x in m1.got}, {x.payload for x in m2.got}
        assert one | two == set(sent) and not one & two
        assert len(one) >= 5 and len(two) >= 5  # both took a share

    run(go)


# ---------------------------------------------------------------- outage


def test_broker_outage_mid_stream_loses_and_duplicates_nothing(lab: Lab, tmp_path: Path) -> None:
    site = Site(lab, tmp_path, ack_timeout_s=1.5)
    seqs = site.add(80, size=40)
    m = site.matcher()

    async def body() -> None:
        await until(lambda: len(m.deliveries) >= 20)
        lab.broker.kill()
        await until(lambda: not site.sync.connected)
        mid = site.outbox.status().depth
        live = site.add(10, size=40)  # capture goes on while the broker is away
        await asyncio.sleep(0.5)
        await asyncio.to_thread(lab.restart_broker)
        await until(lambda: site.outbox.status().depth == 0, timeout=30)
        assert mid > 0 and live == list(range(81, 91))

    asyncio.run(running(m.run, site.sync.run, body=body))
    stored = m.seqs("gw-a")
    assert sorted(stored) == [*seqs, *range(81, 91)]  # nothing lost...
    assert len(stored) == len(set(stored)) and not m.conflicts  # ...nothing twice
    assert site.sync.counters.disconnects >= 1 and site.sync.counters.connects >= 2


# ---------------------------------------------------------------- the generator and its CLI


def test_acl_refuses_unsafe_matcher_names(lab: Lab) -> None:
    for bad in (["x\ntopic readwrite #"], ["a b"], ["m", "m"], ["gw-a"]):
        reg = Registry(gateways=dict(lab.registry.gateways), matchers=bad)
        with pytest.raises(ConfigError):
            render_acl(reg)


def test_broker_config_cli_output_runs_a_broker_that_enforces_it(lab: Lab,
                                                                 tmp_path: Path) -> None:
    from bzgw.cli import cli

    pki = lab.root / "pki"
    port = free_port()
    out = tmp_path / "conf"
    args = ["broker", "config", "--registry", str(lab.root / "registry.yaml"), "--out",
            str(out), "--port", str(port), "--bind", "127.0.0.1", "--ca", str(pki / "ca.crt"),
            "--cert", str(pki / "broker.crt"), "--key", str(pki / "broker.key"),
            "--persistence-dir", "", "--log-file", str(tmp_path / "b.log")]
    if os.geteuid() == 0:
        args.append("--run-as-root")
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "2 gateways, 2 matchers" in res.output
    conf = (out / "mosquitto.conf").read_text()
    for line in ("require_certificate true", "use_identity_as_username true",
                 "allow_anonymous false", f"listener {port} 127.0.0.1",
                 f"acl_file {(out / 'acl').resolve()}"):
        assert line in conf.splitlines()
    assert (out / "acl").read_text() == render_acl(lab.registry)
    lab.broker.stop()  # only the CLI's broker runs now
    with MosquittoProcess(conf=out / "mosquitto.conf", port=port, log=tmp_path / "b.log"):
        a_cfg = msgspec.structs.replace(lab.gateways["gw-a"].mqtt, port=port)
        m_cfg = msgspec.structs.replace(lab.matcher_mqtt["matcher"], port=port)

        async def go() -> None:
            async with Listening(m_cfg, "matcher", topics.SHARED_BATCHES) as m, \
                    MqttClient(a_cfg, "gw-a") as a:
                await a.publish(topics.batch(*A), b"via cli config")
                with pytest.raises(MqttPublishError, match="Not authorized"):
                    await a.publish(topics.batch(*B), b"forged")
                await until(lambda: len(m.got) == 1)
            assert m.got[0].payload == b"via cli config"

        run(go)


def test_broker_config_cli_reports_bad_registry(tmp_path: Path) -> None:
    from bzgw.cli import EXIT_CONFIG, cli

    reg = tmp_path / "r.yaml"
    reg.write_text("gateways:\n  - id: Bad_Id\n    province: hn\n    venue: v\n"
                   "    signing_key: '00'\n")
    res = CliRunner().invoke(cli, ["broker", "config", "--registry", str(reg), "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == EXIT_CONFIG and "r.yaml:2" in res.output
    assert not (tmp_path / "o" / "acl").exists()
