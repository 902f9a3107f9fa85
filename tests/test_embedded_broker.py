"""amqtt as the demo's in-process broker, checked with paho as the agent uses it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.embedded_broker import AmqttBroker, start_demo_broker


@pytest.fixture
def amqtt_broker() -> Iterator[AmqttBroker]:
    broker = AmqttBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


class Receiver:
    """A paho MQTT 3.1.1 client that records what it receives."""

    def __init__(self, port: int, client_id: str, *, will: tuple[str, bytes] | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_retained_message_reaches_late_subscriber(amqtt_broker: AmqttBroker) -> None:
    publisher = Receiver(amqtt_broker.port, "publisher")
    info = publisher.client.publish("edge-agent/a/status", b"online", qos=1, retain=True)
    info.wait_for_publish(5)
    late = Receiver(amqtt_broker.port, "late")
    late.client.subscribe("edge-agent/a/status", qos=1)
    messages = late.wait_for(1)
    publisher.close()
    late.close()
    assert [m.payload for m in messages] == [b"online"]
    assert messages[0].retain


def test_qos1_messages_arrive_in_order(amqtt_broker: AmqttBroker) -> None:
    subscriber = Receiver(amqtt_broker.port, "subscriber")
    subscriber.client.subscribe("plant/+/+/vibration", qos=1)
    time.sleep(0.3)
    publisher = Receiver(amqtt_broker.port, "publisher")
    for index in range(500):
        publisher.client.publish("plant/l/a/vibration", index.to_bytes(4, "little") + bytes(4800), qos=1)
    messages = subscriber.wait_for(500)
    publisher.close()
    subscriber.close()
    assert len(messages) == 500
    assert [int.from_bytes(m.payload[:4], "little") for m in messages] == list(range(500))
    assert all(m.qos == 1 for m in messages)


def test_last_will_is_published_and_retained(amqtt_broker: AmqttBroker) -> None:
    agent = Receiver(amqtt_broker.port, "agent", will=("edge-agent/a/status", b"offline"))
    agent.client.publish("edge-agent/a/status", b"online", qos=1, retain=True).wait_for_publish(5)
    # Dropping the socket without DISCONNECT is what a crashed agent does.
    agent.client.loop_stop()
    agent.client.socket().close()
    time.sleep(1.0)
    late = Receiver(amqtt_broker.port, "late")
    late.client.subscribe("edge-agent/a/status", qos=1)
    messages = late.wait_for(1)
    late.close()
    assert [m.payload for m in messages] == [b"offline"]


def test_amqtt_listens_on_loopback_only(amqtt_broker: AmqttBroker) -> None:
    assert amqtt_broker.url == f"mqtt://127.0.0.1:{amqtt_broker.port}"
    assert amqtt_broker.protocol == "3.1.1"


def test_demo_broker_rejects_unknown_choice(tmp_path) -> None:
    with pytest.raises(ValueError, match="prefer must be"):
        start_demo_broker(tmp_path, prefer="rabbitmq")


def test_auto_takes_amqtt_without_mosquitto(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_agent.embedded_broker.mosquitto_path", lambda: None)
    broker = start_demo_broker(tmp_path, prefer="auto")
    try:
        assert isinstance(broker, AmqttBroker)
        assert broker.protocol == "3.1.1"
    finally:
        broker.close()
