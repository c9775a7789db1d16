"""The fleet operator's side of the command tests: a paho MQTT 5 (or 3.1.1) client on its own
thread that publishes commands with a response topic and correlation data and collects the
replies."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from typing import Any

import msgspec
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agentd.uplink.cmdproto import sign

__all__ = ["Operator"]


class Operator:
    def __init__(
        self,
        port: int,
        prefix: str,
        node: str,
        *,
        v5: bool = True,
        sender: str = "ops-1",
        reply_topic: str | None = None,
    ) -> None:
        self.prefix, self.node, self.v5, self.sender = prefix, node, v5, sender
        self.reply_topic = reply_topic or f"ops/replies/{uuid.uuid4().hex[:8]}"
        self.replies: queue.Queue[tuple[str, dict[str, Any], bytes | None]] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ops-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=10)

    def __enter__(self) -> Operator:
        self.client.loop_start()
        assert self._subscribed.wait(10), "operator did not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(
            [
                (self.reply_topic, 1),
                (f"{self.prefix}/{self.node}/reply/+", 1),
                ("ops/denied/#", 1),
            ]
        )

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None)
        ctype = getattr(props, "ContentType", None)
        try:
            if ctype == "application/msgpack":
                body = msgspec.msgpack.decode(msg.payload)
                body["_msgpack"] = True
            else:
                body = json.loads(msg.payload)
        except (ValueError, msgspec.DecodeError):
            body = {"_raw": bytes(msg.payload).hex()}
        self.replies.put((msg.topic, body, bytes(corr) if corr is not None else None))

    def publish(
        self,
        verb: str,
        body: dict[str, Any] | bytes,
        *,
        correlation: bytes | None = None,
        response_topic: str | None = None,
        retain: bool = False,
        key: bytes | None = None,
        bad_signature: bool = False,
        expiry: int | None = None,
        group: str | None = None,
        msgpack: bool = False,
    ) -> None:
        topic = (
            f"{self.prefix}/group/{group}/cmd/{verb}"
            if group
            else f"{self.prefix}/{self.node}/cmd/{verb}"
        )
        if isinstance(body, bytes):
            payload = body
        elif msgpack:
            payload = msgspec.msgpack.encode(body)
        else:
            payload = json.dumps(body).encode()
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic or self.reply_topic
            props.CorrelationData = correlation or uuid.uuid4().bytes
            props.ContentType = "application/msgpack" if msgpack else "application/json"
            user = [("sender", self.sender)]
            if key is not None:
                sig = sign(key, topic, payload)
                user.append(("signature", sig[:-4] + "0000" if bad_signature else sig))
            props.UserProperty = user
            if expiry is not None:
                props.MessageExpiryInterval = expiry
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(10)

    def reply(self, timeout: float = 20.0) -> tuple[str, dict[str, Any], bytes | None]:
        return self.replies.get(timeout=timeout)

    def final_reply(self, timeout: float = 60.0) -> tuple[str, dict[str, Any], bytes | None]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.reply(max(0.1, deadline - time.monotonic()))
            if got[1].get("final", True):
                return got

    def no_reply(self, wait: float = 1.0) -> bool:
        try:
            self.replies.get(timeout=wait)
        except queue.Empty:
            return True
        return False
