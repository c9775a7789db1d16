"""`DeviceLink`: one device plugin's own connection to a broker, kept up in the background.

Driven like the uplink's transport (agentd/uplink/mqtt.py, whose paho pieces it reuses from
agentd/uplink/mqtt_client.py: the `Client` with its TLS handshake fix and read-ahead, the
`Handoff` of an abandoned connect, the reason texts): on the event loop's thread with no paho
thread, the socket's fd on ``add_reader``/``add_writer``, a 1 s ``loop_misc`` timer for the
keepalive, and paho's blocking ``connect()`` (bounded by ``connect_timeout``) in an executor.

What differs from the uplink: the link reconnects by itself (full-jitter backoff between
``reconnect_min`` and ``reconnect_max``) and subscribes again after each connect; it needs no
will; and a flood cannot starve the loop: a readable socket is read at most `READ_BATCH`
packets per loop turn, the rest on the next turn (timers and other tasks run in between).
Each connect is a clean session with a fresh random client id unless ``client_id`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Final

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agentd.uplink.config import MqttConfig, read_password
from agentd.uplink.mqtt_client import (
    Client,
    Handoff,
    SocketDrive,
    connack_reason,
    oserror_text,
    properties,
)

__all__ = ["READ_BATCH", "DeviceLink", "LinkError"]

log = logging.getLogger("agentd.devices.mqtt")

#: packets parsed per loop turn when a socket has more: paho parses one in ~18 us on the
#: 2-core CI machine (a small JSON message), so one turn of a flood takes ~0.6 ms, which is
#: what a flood adds to a tick's lateness
READ_BATCH: Final = 32
_UNSUPPORTED_VERSION: Final = frozenset({0x01, 0x84})

OnMessage = Callable[[paho.MQTTMessage], None]


class LinkError(Exception):
    """A connect, subscribe or publish that failed; the message is one line."""


class DeviceLink(SocketDrive):
    """A connection that comes back after a broker restart. ``problem()`` is None while it is
    up, else why not."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        role: str,
        reconnect: tuple[float, float],
        subscriptions: Sequence[str] = (),
        qos: int = 0,
        on_message: OnMessage | None = None,
        max_packet: int | None = None,
    ) -> None:
        self.config = config
        self.endpoint = config.endpoint()
        self.where = f"{self.endpoint.host}:{self.endpoint.port}"
        #: what log lines call this link ("mqtt sensor 127.0.0.1:1883")
        self.name = f"mqtt {role} {self.where}"
        self._reconnect = reconnect
        self._subscriptions = list(subscriptions)
        self._qos = qos
        self._on_message = on_message
        self._max_packet = max_packet
        self._client: Client | None = None
        self._v5 = True
        self._fd = -1
        self._misc: asyncio.TimerHandle | None = None
        self._more: asyncio.Handle | None = None
        self._connack: asyncio.Future[int] | None = None
        self._suback: asyncio.Future[list[ReasonCode]] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._pending: dict[int, asyncio.Future[str]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._error: str = "not connected yet"
        #: connections made after the first (broker restarts, lost links)
        self.reconnects = 0
        self.connects = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, wait: float) -> None:
        """Start connecting in the background and wait up to ``wait`` seconds for the first
        connection. A broker that is down is not an error here (the link keeps trying); a
        password that cannot be read is (ConfigError)."""
        read_password(self.config)
        self._task = asyncio.create_task(self._run(), name=f"mqtt-device:{self.where}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), wait)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client = self._client
        if client is not None and self._lost is not None and not self._lost.done():
            client.disconnect()
            with contextlib.suppress(Exception):  # the DISCONNECT out before the socket closes
                client.loop_write()
        self._teardown("stopped")

    def problem(self) -> str | None:
        return None if self._up.is_set() else f"{self.where}: not connected: {self._error}"

    async def wait_up(self, timeout: float) -> bool:
        if not self._up.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), timeout)
        return self._up.is_set()

    async def _run(self) -> None:
        low, high = self._reconnect
        attempt = 0
        while True:
            try:
                await self._connect()
            except Exception as exc:  # noqa: BLE001 - any failed connect is retried
                error = str(exc) if isinstance(exc, LinkError) else f"{type(exc).__name__}: {exc}"
                if error != self._error:
                    log.warning("%s: %s; retrying", self.name, error)
                self._error = error
                attempt += 1
                await asyncio.sleep(random.uniform(0, min(high, low * 2**attempt)))
                continue
            self.connects += 1
            if self.connects > 1:
                self.reconnects += 1
                log.warning("%s: connected again after %d attempts", self.name, attempt + 1)
            attempt = 0
            self._up.set()
            assert self._lost is not None
            why = await asyncio.shield(self._lost)
            log.warning("%s: %s; reconnecting", self.name, why)

    # -- connect -----------------------------------------------------------------------------
    async def _connect(self) -> None:
        versions = {
            "auto": (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311),
            "5": (MQTTProtocolVersion.MQTTv5,),
            "3.1.1": (MQTTProtocolVersion.MQTTv311,),
        }[self.config.protocol]
        for n, version in enumerate(versions):
            rc = await self._connect_version(version)
            if rc == 0:
                break
            self._teardown("refused")
            reason = connack_reason(rc, version == MQTTProtocolVersion.MQTTv5)
            if rc not in _UNSUPPORTED_VERSION or n + 1 == len(versions):
                raise LinkError(f"connect refused: {reason} (0x{rc:02x})")
        if self._subscriptions:
            await self._subscribe()

    async def _connect_version(self, version: MQTTProtocolVersion) -> int:
        self._teardown("reconnecting")
        loop = asyncio.get_running_loop()
        c = self.config
        v5 = version == MQTTProtocolVersion.MQTTv5
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=c.client_id or f"agentd-{secrets.token_hex(6)}",
            protocol=version,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        client.suppress_exceptions = False
        client.connect_timeout = c.connect_timeout
        if self.endpoint.tls:
            client.tls_set_context(self._tls_context())
        if c.username:
            try:
                password = read_password(c)
            except Exception as exc:  # noqa: BLE001 - a ConfigError: one line, keep trying
                raise LinkError(str(exc)) from None
            client.username_pw_set(c.username, password)
        props = None
        if v5 and self._max_packet:
            # the broker does not even send a packet past this (it drops it for us)
            props = properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = self._max_packet
        handoff = Handoff(client)
        try:
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(None, self._blocking_connect, client, v5, props, handoff),
                    c.connect_timeout + 1.0,
                )
            except BaseException:
                handoff.abandon()
                raise
        except TimeoutError:
            raise LinkError("connect timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise LinkError(f"TLS: certificate verify failed: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise LinkError(f"TLS: {exc.reason or exc}") from None
        except (OSError, ValueError) as exc:
            raise LinkError(oserror_text(exc)) from None
        self._client, self._v5 = client, v5
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        self._attach(client)
        try:
            return await asyncio.wait_for(asyncio.shield(self._connack), c.connect_timeout)
        except TimeoutError:
            self._teardown("no CONNACK")
            raise LinkError("no CONNACK") from None

    def _blocking_connect(
        self, client: paho.Client, v5: bool, props: Properties | None, handoff: Handoff
    ) -> None:
        ep, c = self.endpoint, self.config
        try:
            if v5:
                rc = client.connect(
                    ep.host, ep.port, c.keepalive, clean_start=True, properties=props
                )
            else:
                rc = client.connect(ep.host, ep.port, c.keepalive)
        finally:
            handoff.finished()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ValueError(paho.error_string(rc))

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            c = self.config
            try:
                ctx = ssl.create_default_context(cafile=c.ca)
                if c.cert and c.key:
                    ctx.load_cert_chain(c.cert, c.key)
            except (OSError, ssl.SSLError) as exc:
                raise LinkError(f"TLS files: {oserror_text(exc)}") from None
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._ssl = ctx
        return self._ssl

    async def _subscribe(self) -> None:
        client = self._client
        if client is None:
            raise LinkError("connection lost before subscribing")
        topics: list[tuple[str, Any]]
        if self._v5:
            # Retain As Published off: a live message is never flagged retained, so the flag
            # means "the broker's stored copy" (of unknown age) on 5 and 3.1.1 alike
            topics = [(t, SubscribeOptions(qos=self._qos)) for t in self._subscriptions]
        else:
            topics = [(t, self._qos) for t in self._subscriptions]
        rc, mid = client.subscribe(topics)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe: {paho.error_string(rc)}")
        self._suback = asyncio.get_running_loop().create_future()
        try:
            codes = await asyncio.wait_for(
                asyncio.shield(self._suback), self.config.connect_timeout
            )
        except TimeoutError:
            self._teardown("no SUBACK")
            raise LinkError("subscribe: no SUBACK") from None
        for topic, code in zip(self._subscriptions, codes, strict=False):
            if int(code.value) >= 0x80:
                self._teardown("subscription refused")
                raise LinkError(f"subscribe {topic[:60]!r} refused: {code}")

    # -- publish -----------------------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float
    ) -> str:
        """Publish and wait (within ``timeout`` seconds, the wait for a connection included)
        for the PUBACK; returns its reason. Raises LinkError or TimeoutError, one line each."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self.wait_up(timeout):
            raise LinkError(f"{self.where}: not connected: {self._error}")
        client = self._client
        if client is None:
            raise LinkError(f"{self.where}: not connected: {self._error}")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkError(f"{self.where}: publish: {paho.error_string(info.rc)}")
        fut: asyncio.Future[str] = loop.create_future()
        self._pending[info.mid] = fut
        try:
            async with asyncio.timeout_at(deadline):
                return await fut
        except TimeoutError:
            what = "PUBACK" if qos else "the write"
            raise TimeoutError(f"{self.where}: no {what} within {timeout:g}s") from None
        finally:
            self._pending.pop(info.mid, None)

    # -- the asyncio drive -------------------------------------------------------------------
    def _attach(self, client: paho.Client) -> None:
        client.on_connect = self._handle_connect
        client.on_subscribe = self._handle_subscribe
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        client.on_disconnect = self._handle_disconnect
        self._drive(client, LinkError)

    def _readable(self) -> None:
        if self._more is not None:  # the selector fired while a continuation was queued
            self._more.cancel()
            self._more = None
        client = self._client
        if client is None:
            return
        for _ in range(READ_BATCH):
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client is not client:
                return
            sock = client.socket()
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if not (client.buffered() or pending):
                return  # the selector says when there is more
        # bytes already read but not parsed: the rest on the next loop turn, after the others
        self._more = asyncio.get_running_loop().call_soon(self._readable)

    # -- paho callbacks (all on the loop thread) ---------------------------------------------
    def _handle_connect(
        self, _c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(int(reason.value))

    def _handle_subscribe(
        self, _c: paho.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Properties
    ) -> None:
        if self._suback is not None and not self._suback.done():
            self._suback.set_result(codes)

    def _handle_publish(
        self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        fut = self._pending.pop(mid, None)
        if fut is None or fut.done():
            return
        code = int(reason.value) if self._v5 else 0
        if code >= 0x80:
            fut.set_exception(LinkError(f"{self.where}: the broker refused the publish: {reason}"))
        else:
            fut.set_result(str(reason) if self._v5 else "Success")

    def _handle_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            try:
                self._on_message(msg)
            except Exception:  # a bad message must not take the link down
                log.exception("%s: handling a message on %r failed", self.name, msg.topic)

    def _handle_disconnect(
        self, _c: paho.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self._teardown(f"the broker disconnected: {reason}")
        else:
            self._teardown("connection lost")

    def _teardown(self, why: str) -> None:
        if self._up.is_set():  # down from now on, not from when _run next wakes
            self._up.clear()
            self._error = why
        if self._more is not None:
            self._more.cancel()
            self._more = None
        self._release()
        err = LinkError(f"{self.where}: no PUBACK, the link went: {why}")
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)
        for f in (self._connack, self._suback):
            if f is not None and not f.done():
                f.set_exception(LinkError(why))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)
