"""The built-in ``mqtt`` transport: a thin asyncio adapter over paho-mqtt 2.x.

Why paho and not aiomqtt: the cursor may only move on a PUBACK whose reason code is success.
paho 2.x hands that reason code to ``on_publish`` (``_handle_pubackcomp`` unpacks it for MQTT 5);
aiomqtt 2.x awaits the PUBACK but drops its reason code, has no reconnect of its own, and a lost
connection does not fail its pending publishes, all of which we would have to rebuild around it.

How it is driven: on the event loop's own thread, with no paho thread. The socket's fd is
registered with ``loop.add_reader`` (-> ``loop_read``) and, while paho has bytes queued, with
``add_writer`` (-> ``loop_write``, through paho's ``on_socket_register_write`` hooks); a 1 s
timer runs ``loop_misc`` (keepalive). So every paho callback runs on the loop: no locks, no
``call_soon_threadsafe`` hops per PUBACK. The one blocking step, paho's ``connect()`` (DNS, TCP
connect, TLS handshake, bounded by ``connect_timeout``), runs in an executor before any hook is
installed. Each connect builds a fresh paho ``Client`` with a clean session, so paho never
retransmits on its own: after a lost link the engine resends from its cursor, and every
message still pending fails with `TransportError` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agentd.errors import ConfigError
from agentd.uplink.base import Delivery, Link, Message, TransportError
from agentd.uplink.config import MqttConfig, read_password
from agentd.uplink.inbound import InboundSink, from_paho
from agentd.uplink.mqtt_client import (
    Client,
    Handoff,
    SocketDrive,
    WrongVersion,
    connack_reason,
    oserror_text,
    properties,
)

__all__ = ["MqttTransport"]

log = logging.getLogger("agentd.uplink.mqtt")

#: CONNACK reason codes (MQTT 5 and the 3.1.1 return code 1) meaning "speak another version"
_UNSUPPORTED_VERSION: Final = frozenset({0x01, 0x84})


class MqttTransport(SocketDrive):
    """One MQTT connection at a time. Implements `agentd.uplink.base.Uplink`."""

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.endpoint = config.endpoint()
        self._client: Client | None = None
        self._v5 = True
        self._fd = -1
        self._pending: dict[int, asyncio.Future[Delivery]] = {}
        self._subscribing: dict[int, asyncio.Future[None]] = {}
        self._connack: asyncio.Future[tuple[int, Properties | None]] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._on_message: Callable[[str, bytes], None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._publish_props: dict[str, Properties] = {}
        self._inbound: InboundSink | None = None

    def set_inbound(self, sink: InboundSink | None) -> None:
        """The command channel sees each inbound message first; one it takes, it acks."""
        self._inbound = sink

    # -- Uplink ------------------------------------------------------------------------------
    async def connect(
        self, client_id: str, will: Message, on_message: Callable[[str, bytes], None]
    ) -> Link:
        await self.close(0.0)
        try:
            password = read_password(self.config)
        except ConfigError as exc:
            raise TransportError(str(exc), refused=True) from None
        self._on_message = on_message
        versions = {
            "auto": (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311),
            "5": (MQTTProtocolVersion.MQTTv5,),
            "3.1.1": (MQTTProtocolVersion.MQTTv311,),
        }[self.config.protocol]
        for n, version in enumerate(versions):
            try:
                return await self._connect(
                    self.config.client_id or client_id, will, password, version
                )
            except WrongVersion as exc:
                if n + 1 == len(versions):
                    raise TransportError(str(exc), refused=True) from None
                log.info("mqtt: %s; retrying with MQTT 3.1.1", exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self, message: Message) -> asyncio.Future[Delivery]:
        fut: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        client = self._client
        if client is None or self._lost is None or self._lost.done():
            fut.set_exception(TransportError("not connected"))
            return fut
        props = None
        if self._v5:
            if message.correlation is not None:  # a reply to an MQTT 5 request: its own
                props = properties(PacketTypes.PUBLISH)
                props.ContentType = message.content_type
                props.CorrelationData = message.correlation
            else:
                # one Properties per content type (paho only packs it): making one per
                # message was a tenth of a drain's time
                props = self._publish_props.get(message.content_type)
                if props is None:
                    props = properties(PacketTypes.PUBLISH)
                    props.ContentType = message.content_type
                    self._publish_props[message.content_type] = props
        info = client.publish(
            message.topic, message.payload, qos=1, retain=message.retain, properties=props
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            fut.set_exception(TransportError(f"publish: {paho.error_string(info.rc)}"))
            return fut
        self._pending[info.mid] = fut
        return fut

    async def subscribe(self, topic: str) -> None:
        client = self._client
        if client is None:
            raise TransportError("not connected")
        # MQTT 5 Retain As Published: a command published with retain set is seen as retained
        # (and ignored) live too, not only as the broker's stored copy on subscribe
        if self._v5:
            opts = SubscribeOptions(qos=1, retainAsPublished=True)
            rc, mid = client.subscribe(topic, options=opts)
        else:
            rc, mid = client.subscribe(topic, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"subscribe {topic}: {paho.error_string(rc)}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribing[mid] = fut
        try:
            await asyncio.wait_for(fut, self.config.connect_timeout)
        except TimeoutError:
            raise TransportError(f"subscribe {topic}: no SUBACK") from None
        finally:
            self._subscribing.pop(mid, None)

    async def wait_lost(self) -> str:
        """Returns the reason once the current link is lost (at once if there is none)."""
        if self._lost is None:
            return "not connected"
        return await asyncio.shield(self._lost)

    async def close(self, timeout: float) -> None:
        client, lost = self._client, self._lost
        if client is not None and lost is not None and not lost.done() and timeout > 0:
            # MQTT 5 reason 0 (normal disconnection): the broker discards the will
            reason = ReasonCode(PacketTypes.DISCONNECT, identifier=0) if self._v5 else None
            client.disconnect(reasoncode=reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lost), timeout)
        self._teardown("closed")

    # -- connect -----------------------------------------------------------------------------
    async def _connect(
        self, client_id: str, will: Message, password: str | None, version: MQTTProtocolVersion
    ) -> Link:
        loop = asyncio.get_running_loop()
        v5 = version == MQTTProtocolVersion.MQTTv5
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,  # reconnects are the engine's, with its backoff
            # a command is acknowledged after its once-only claim commits (inbound.py)
            manual_ack=True,
        )
        client.suppress_exceptions = False
        client.connect_timeout = self.config.connect_timeout
        # the engine keeps its window below the broker's Receive Maximum; paho must not queue
        client.max_inflight_messages_set(0)
        if self.endpoint.tls:
            client.tls_set_context(self._tls_context())
        if self.config.username:
            client.username_pw_set(self.config.username, password)
        will_props = None
        if v5:
            will_props = properties(PacketTypes.WILLMESSAGE)
            will_props.ContentType = will.content_type
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain, properties=will_props)
        handoff = Handoff(client)
        try:
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(None, self._blocking_connect, client, v5, handoff),
                    self.config.connect_timeout + 1.0,
                )
            except BaseException:
                handoff.abandon()
                raise
        except TimeoutError:
            raise TransportError(f"connect {self._where()}: timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(
                f"connect {self._where()}: TLS: certificate verify failed: {exc.verify_message}",
                refused=True,
            ) from None
        except ssl.SSLError as exc:
            raise TransportError(
                f"connect {self._where()}: TLS: {exc.reason or exc}", refused=True
            ) from None
        except (OSError, ValueError) as exc:
            raise TransportError(f"connect {self._where()}: {oserror_text(exc)}") from None

        self._client, self._v5 = client, v5
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        self._attach(client)
        try:
            rc, props = await asyncio.wait_for(
                asyncio.shield(self._connack), self.config.connect_timeout
            )
        except TimeoutError:
            self._teardown("no CONNACK")
            raise TransportError(f"connect {self._where()}: no CONNACK") from None
        except TransportError as exc:
            self._teardown(str(exc))
            if self.config.protocol == "auto" and v5:
                raise WrongVersion(f"connect {self._where()}: {exc}") from None
            raise
        if rc != 0:
            self._teardown("refused")
            reason = connack_reason(rc, v5)
            if rc in _UNSUPPORTED_VERSION:
                raise WrongVersion(f"connect {self._where()}: refused: {reason}")
            raise TransportError(
                f"connect {self._where()}: refused: {reason} (0x{rc:02x})", refused=True, code=rc
            )
        receive_max, max_packet = 65_535, None
        if props is not None:
            receive_max = int(getattr(props, "ReceiveMaximum", 65_535))
            max_packet = getattr(props, "MaximumPacketSize", None)
        return Link(
            receive_maximum=receive_max,
            max_packet_size=int(max_packet) if max_packet else None,
            protocol="mqtt5" if v5 else "mqtt3.1.1",
            reason_codes=v5,
        )

    def _blocking_connect(self, client: paho.Client, v5: bool, handoff: Handoff) -> None:
        ep = self.endpoint
        try:
            if v5:
                rc = client.connect(ep.host, ep.port, self.config.keepalive, clean_start=True)
            else:
                rc = client.connect(ep.host, ep.port, self.config.keepalive)
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
                raise TransportError(f"TLS files: {oserror_text(exc)}", refused=True) from None
            ctx.check_hostname = True  # the default context's, stated: never turned off
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._ssl = ctx
        return self._ssl

    def _where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"

    # -- the asyncio drive -------------------------------------------------------------------
    def _attach(self, client: paho.Client) -> None:
        client.on_connect = self._handle_connect
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_disconnect = self._handle_disconnect
        self._drive(client, TransportError)

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_read()
        # our read-ahead buffer, or an SSL socket, may hold bytes the selector cannot see
        while self._client is client and client.socket() is not None:
            sock = client.socket()
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if not (client.buffered() or pending):
                break
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    # -- paho callbacks (all on the loop thread) ---------------------------------------------
    def _handle_connect(
        self,
        _c: paho.Client,
        _u: Any,
        _flags: paho.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((int(reason.value), props if self._v5 else None))

    def _handle_publish(
        self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _props: Properties
    ) -> None:
        fut = self._pending.pop(mid, None)
        if fut is None or fut.done():
            return
        if not self._v5:
            fut.set_result(Delivery(ok=True))
            return
        code = int(reason.value)
        fut.set_result(Delivery(ok=code < 0x80, code=code, reason=str(reason)))

    def _handle_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode], _props: Properties
    ) -> None:
        fut = self._subscribing.get(mid)
        if fut is None or fut.done():
            return
        bad = [c for c in codes if int(c.value) >= 0x80]
        if bad:
            fut.set_exception(TransportError(f"subscribe refused: {bad[0]}", refused=True))
        else:
            fut.set_result(None)

    def _handle_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        qos, mid = msg.qos, msg.mid

        def ack() -> None:
            # a PUBACK belongs to the connection the PUBLISH came on; after a reconnect the
            # mid means nothing (the clean session dropped the message)
            if qos > 0 and self._client is client:
                client.ack(mid, qos)

        try:
            sink = self._inbound
            if sink is not None and sink(from_paho(msg), ack):
                return
            if self._on_message is not None:
                self._on_message(msg.topic, bytes(msg.payload))
        except Exception:  # a consumer's bad message must not take the link down
            log.exception("mqtt: handling a message on %s failed", msg.topic)
        ack()

    def _handle_disconnect(
        self,
        _c: paho.Client,
        _u: Any,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if _flags.is_disconnect_packet_from_server:
            self._teardown(f"the broker disconnected: {reason}")
        else:
            self._teardown("connection lost")

    def _teardown(self, why: str) -> None:
        """Forget the link: fail whatever waits on it, release the fd, close the socket."""
        self._release()
        err = TransportError(f"link lost: {why}")
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)
        for sfut in self._subscribing.values():
            if not sfut.done():
                sfut.set_exception(err)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(TransportError(why))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)
