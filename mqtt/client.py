"""An asyncio face on paho-mqtt 2.x: one object is one MQTT 5 session over TLS.

paho runs its network loop in its own thread (``loop_start``); every callback is handed to the
asyncio loop with ``call_soon_threadsafe``. Each QoS 1 publish maps its message id to a Future
that is resolved by the PUBACK's reason code and removed in ``finally``. Reconnection is the
caller's job (a new :class:`MqttClient` per attempt, with backoff), as in aiomqtt: paho's own
retry loop is switched off so a failed session always surfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import BzgwError
from mqtt.config import MqttConfig

log = logging.getLogger(__name__)


class MqttError(BzgwError):
    """The MQTT session failed or an operation was refused."""


class MqttConnectError(MqttError):
    """The broker refused the connection or TLS failed.

    Attributes:
        reason: the broker's reason, or the transport error text.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"MQTT connect failed: {reason}")


class MqttPublishError(MqttError):
    """The broker answered a publish with a failure reason code (e.g. Not authorized)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One received message."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Will:
    """Last will: published by the broker if the session ends without DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Client TLS context: verify the broker against our CA, present our certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    except (OSError, ssl.SSLError) as err:
        raise MqttConnectError(f"cannot load client certificate {cfg.cert_file}: {err}") from err
    return ctx


class MqttClient:
    """One MQTT 5 session. Use as ``async with MqttClient(cfg, "gw-1") as c: ...``."""

    def __init__(self, cfg: MqttConfig, client_id: str, *, will: Will | None = None,
                 clean_start: bool = True, max_queued_incoming: int = 10000,
                 session_expiry_s: int = 0) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=paho.MQTTv5, reconnect_on_failure=False)
        self._paho.tls_set_context(tls_context(cfg))
        if will is not None:
            self._paho.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._lock = threading.RLock()
        self._pending: dict[int, asyncio.Future[ReasonCode | None]] = {}
        self._early: dict[int, ReasonCode | None] = {}
        self._qos0: set[int] = set()
        self._early_subs: dict[int, list[ReasonCode]] = {}
        self._subs: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._connected_fut: asyncio.Future[None] | None = None
        self._incoming: asyncio.Queue[Message] = asyncio.Queue(max_queued_incoming)
        self.dropped_incoming = 0
        self.connected = False
        self.disconnected = asyncio.Event()
        self.disconnect_reason: str | None = None
        self._paho.on_connect = self._on_connect
        self._paho.on_connect_fail = self._on_connect_fail
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_publish = self._on_publish
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_message = self._on_message
        self._paho.max_inflight_messages_set(max(cfg.inflight, 20))
        self._paho.max_queued_messages_set(0)

    # -- paho thread → asyncio loop ----------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed between check and call
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    props: Properties | None) -> None:
        self._call(self._connected, rc)

    def _connected(self, rc: ReasonCode) -> None:
        fut = self._connected_fut
        if rc.is_failure:
            if fut is not None and not fut.done():
                fut.set_exception(MqttConnectError(str(rc)))
            return
        self.connected = True
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho's thread would retry the first connection forever; fail the attempt instead
        self._call(self._connect_failed)

    def _connect_failed(self) -> None:
        fut = self._connected_fut
        if fut is not None and not fut.done():
            fut.set_exception(MqttConnectError(
                f"cannot reach {self.cfg.host}:{self.cfg.port} (refused or unreachable)"))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                       props: Properties | None) -> None:
        self._call(self._disconnected, str(rc))

    def _disconnected(self, reason: str) -> None:
        self.connected = False
        self.disconnect_reason = reason
        self.disconnected.set()
        err = MqttError(f"disconnected: {reason}")
        if self._connected_fut is not None and not self._connected_fut.done():
            self._connected_fut.set_exception(MqttConnectError(
                f"{reason} (TLS handshake or certificate refused? see the broker log)"))
        with self._lock:
            futs = list(self._pending.values()) + list(self._subs.values())
        for f in futs:
            if not f.done():
                f.set_exception(err)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode,
                    props: Properties | None) -> None:
        with self._lock:
            if mid in self._qos0:
                self._qos0.discard(mid)
                return
            fut = self._pending.get(mid)
            if fut is None:  # PUBACK raced ahead of publish() registering its future
                self._early[mid] = rc
                return
        self._call(self._resolve, fut, rc)

    @staticmethod
    def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
        if not fut.done():
            fut.set_result(value)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                      rcs: list[ReasonCode], props: Properties | None) -> None:
        with self._lock:
            fut = self._subs.get(mid)
            if fut is None:  # SUBACK raced ahead of subscribe() registering its future
                self._early_subs[mid] = list(rcs)
                return
        self._call(self._resolve, fut, list(rcs))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._call(self._enqueue, Message(msg.topic, bytes(msg.payload), msg.qos,
                                          bool(msg.retain)))

    def _enqueue(self, m: Message) -> None:
        try:
            self._incoming.put_nowait(m)
        except asyncio.QueueFull:
            self.dropped_incoming += 1
            log.warning("incoming MQTT queue full: dropped a message on %s", m.topic)

    # -- public API ----------------------------------------------------------------------------
    async def connect(self, timeout: float = 10.0) -> None:
        """Open the session.

        Raises:
            MqttConnectError: refused, TLS failure, unreachable broker or timeout.
        """
        self._loop = asyncio.get_running_loop()
        self._connected_fut = self._loop.create_future()
        props = Properties(PacketTypes.CONNECT)
        if self._session_expiry_s:
            props.SessionExpiryInterval = self._session_expiry_s
        try:
            self._paho.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s,
                                     clean_start=self._clean_start, properties=props)
            self._paho.loop_start()
            await asyncio.wait_for(asyncio.shield(self._connected_fut), timeout)
        except (TimeoutError, OSError) as err:
            await self.close()
            raise MqttConnectError(f"{type(err).__name__}: {err} ({self.cfg.host}:"
                                   f"{self.cfg.port})") from err
        except MqttConnectError:
            await self.close()
            raise

    async def publish(self, topic: str, payload: bytes | str, *, qos: int = 1,
                      retain: bool = False, timeout: float = 30.0) -> None:
        """Publish and, for QoS ≥ 1, wait for the broker's acknowledgement.

        Raises:
            MqttPublishError: the broker refused it (reason code is a failure).
            MqttError: the session ended before the acknowledgement.
        """
        fut = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        await asyncio.wait_for(fut, timeout)

    def publish_nowait(self, topic: str, payload: bytes | str, *, qos: int = 1,
                       retain: bool = False) -> asyncio.Future[None]:
        """Start a publish; the returned Future completes on PUBACK (or fails)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self.connected:
            done.set_exception(MqttError("not connected"))
            return done
        ack: asyncio.Future[ReasonCode | None] = loop.create_future()
        # Not under self._lock: paho calls on_publish holding its own message mutex, and
        # on_publish takes self._lock; holding ours while paho takes its mutex deadlocks.
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            done.set_exception(MqttError(f"publish failed: {paho.error_string(info.rc)}"))
            return done
        mid = info.mid
        with self._lock:
            if mid in self._early:
                ack.set_result(self._early.pop(mid))
            elif qos == 0:
                self._qos0.add(mid)  # its on_publish is still to come: ignore it then
            else:
                self._pending[mid] = ack

        def finish(f: asyncio.Future[ReasonCode | None]) -> None:
            with self._lock:
                self._pending.pop(mid, None)
            if done.done():
                return
            if f.cancelled():
                done.cancel()
            elif (exc := f.exception()) is not None:
                done.set_exception(exc)
            else:
                rc = f.result()
                if rc is not None and rc.is_failure:
                    done.set_exception(MqttPublishError(f"broker refused publish to {topic}: {rc}"))
                else:
                    done.set_result(None)

        ack.add_done_callback(finish)
        if qos == 0:
            ack.set_result(None) if not ack.done() else None
        return done

    async def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and check the SUBACK.

        Raises:
            MqttError: refused or the session ended.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[ReasonCode]] = loop.create_future()
        rc, mid = self._paho.subscribe(topic, qos=qos)  # not under self._lock (see publish)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe to {topic} failed: {paho.error_string(rc)}")
        with self._lock:
            if mid in self._early_subs:
                fut.set_result(self._early_subs.pop(mid))
            else:
                self._subs[mid] = fut
        try:
            rcs = await asyncio.wait_for(fut, timeout)
        finally:
            with self._lock:
                self._subs.pop(mid, None)
        bad = [r for r in rcs if r.is_failure]
        if bad:
            raise MqttError(f"subscribe to {topic} refused: {bad[0]}")

    async def messages(self) -> AsyncIterator[Message]:
        """Received messages until the session ends (then ``MqttError``)."""
        while True:
            if self._incoming.empty() and self.disconnected.is_set():
                raise MqttError(f"disconnected: {self.disconnect_reason}")
            get = asyncio.ensure_future(self._incoming.get())
            gone = asyncio.ensure_future(self.disconnected.wait())
            try:
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not get.done():
                    get.cancel()
            if get.done() and not get.cancelled():
                yield get.result()

    async def close(self) -> None:
        """Disconnect cleanly (no last will) and stop paho's thread."""
        with contextlib.suppress(Exception):
            self._paho.disconnect()
        await asyncio.to_thread(self._paho.loop_stop)
        self.connected = False

    async def __aenter__(self) -> MqttClient:
        await self.connect()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
