"""MQTT transport: one paho-mqtt 2.x client behind a small interface.

The transport owns the connection and nothing else. Its callbacks run on paho's
network thread, so they only copy each message into the agent's inbox and return:
decoding, storage and inference happen on the agent's own workers.

Subscriptions are (re)made inside the connect callback, so every reconnect, with or
without a session kept by the broker, ends subscribed. Reconnects use paho's capped
exponential backoff (`reconnect_min_s` doubling up to `reconnect_max_s`).

Acknowledgements are manual: a QoS 1 message is acknowledged by `ack()` once the
worker has processed it (for a label, once its windows are committed to SQLite). A
message still unacknowledged when the connection drops is redelivered by the broker
when a session is kept. Its stale packet id is never acknowledged on the new
connection, because packet ids are only unique within one connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from edge_agent.errors import TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Will:
    """Last-will message the broker publishes when the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class BrokerSettings:
    """Broker address, identity and session settings, built from the `mqtt` config section."""

    host: str
    port: int
    client_id: str
    protocol: str = "5"
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    # 0 means a clean session on every connect; > 0 keeps the session (queued QoS 1
    # messages, subscriptions) for that many seconds after a disconnect.
    session_expiry_s: int = 0


@dataclass(frozen=True)
class Subscription:
    topic_filter: str
    qos: int


@dataclass(frozen=True)
class InboundMessage:
    """A message copied off paho's thread; `ack_token` is passed back to `ack()`."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    ack_token: tuple[int, int] | None  # (connection generation, packet id) for QoS >= 1


def read_password_file(path: str | Path | None) -> str | None:
    """Read a broker password from a file, without its trailing newline."""
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise TransportError(
            f"cannot read mqtt.password_file {path}: {exc.strerror}; "
            "create it with the broker password, readable by the agent's user"
        ) from exc


def _protocol_version(name: str) -> MQTTProtocolVersion:
    if name == "5":
        return MQTTProtocolVersion.MQTTv5
    if name == "3.1.1":
        return MQTTProtocolVersion.MQTTv311
    raise TransportError(f"unsupported MQTT protocol {name!r}; use '5' or '3.1.1'")


class MqttTransport:
    """A reconnecting MQTT client that hands every message to `on_message`.

    `on_message(InboundMessage)` runs on paho's network thread and must not block.
    `on_connected(session_present)` runs there too, after the subscriptions are sent.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        subscriptions: Sequence[Subscription],
        on_message: Callable[[InboundMessage], None],
        will: Will | None = None,
        on_connected: Callable[[bool], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._subscriptions = list(subscriptions)
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected
        self._on_disconnected_cb = on_disconnected
        self._lock = threading.Lock()
        self._generation = 0
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.last_error: str | None = None
        self._stopping = False

        protocol = _protocol_version(settings.protocol)
        self._is_v5 = protocol == MQTTProtocolVersion.MQTTv5
        clean_session = None if self._is_v5 else settings.session_expiry_s == 0
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=clean_session,
            protocol=protocol,
            manual_ack=True,
        )
        # Queued outgoing QoS 1 messages are bounded by the agent's outbox, not here.
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(
            min_delay=max(1, round(settings.reconnect_min_s)),
            max_delay=max(1, round(settings.reconnect_max_s)),
        )
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_connect = self._handle_connect
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message

    # Lifecycle

    def start(self) -> None:
        """Start connecting in the background; returns at once."""
        properties = None
        clean_start: Any = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        if self._is_v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.settings.session_expiry_s
            clean_start = self.settings.session_expiry_s == 0
        try:
            self._client.connect_async(
                self.settings.host,
                self.settings.port,
                keepalive=self.settings.keepalive_s,
                clean_start=clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise TransportError(
                f"cannot connect to MQTT broker {self.address}: {exc}"
            ) from exc
        self._client.loop_start()
        log.info("connecting to MQTT broker %s as %s", self.address, self.settings.client_id)

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    @property
    def address(self) -> str:
        return f"mqtt://{self.settings.host}:{self.settings.port}"

    # Messages

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Queue a message for publication; paho sends it from its network thread."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def ack(self, token: tuple[int, int] | None, qos: int) -> None:
        """Acknowledge a processed message, unless it arrived on an older connection."""
        if token is None or qos == 0:
            return
        generation, mid = token
        with self._lock:
            if generation != self._generation:
                return
        self._client.ack(mid, qos)

    def set_subscriptions(self, subscriptions: Sequence[Subscription]) -> None:
        """Replace the subscriptions: unsubscribe the dropped filters, subscribe the new."""
        old = {s.topic_filter for s in self._subscriptions}
        new = list(subscriptions)
        self._subscriptions = new
        if not self.connected.is_set():
            return
        dropped = sorted(old - {s.topic_filter for s in new})
        if dropped:
            self._client.unsubscribe(dropped)
        self._subscribe_all()

    # paho callbacks (network thread)

    def _subscribe_all(self) -> None:
        if not self._subscriptions:
            return
        result, _mid = self._client.subscribe([(s.topic_filter, s.qos) for s in self._subscriptions])
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", mqtt.error_string(result))
            return
        log.info("subscribed to %s", ", ".join(s.topic_filter for s in self._subscriptions))

    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker {self.address} refused the connection: {reason}"
            log.error("%s", self.last_error)
            return
        with self._lock:
            self._generation += 1
        self.connects += 1
        self.last_error = None
        session_present = bool(getattr(flags, "session_present", False))
        log.info(
            "connected to %s (MQTT %s, session present: %s)",
            self.address, self.settings.protocol, session_present,
        )
        self._subscribe_all()
        self.connected.set()
        if self._on_connected_cb is not None:
            self._on_connected_cb(session_present)

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = "the TCP connection failed (is the broker running and listening on that port?)"
        log.warning("cannot reach MQTT broker %s: %s; retrying with backoff", self.address, self.last_error)

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and self._stopping:
            log.info("disconnected from %s", self.address)
        elif was_connected:
            self.disconnects += 1
            log.warning("disconnected from %s: %s; reconnecting", self.address, reason)
            if self._on_disconnected_cb is not None:
                self._on_disconnected_cb(str(reason))

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        token = None
        if message.qos > 0:
            with self._lock:
                token = (self._generation, message.mid)
        self._on_message_cb(
            InboundMessage(
                topic=message.topic,
                payload=bytes(message.payload),
                qos=message.qos,
                retain=bool(message.retain),
                ack_token=token,
            )
        )
