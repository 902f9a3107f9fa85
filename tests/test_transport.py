"""MqttTransport against a real Mosquitto on loopback."""

from __future__ import annotations

import queue
import time

from edge_agent.broker import MosquittoBroker
from edge_agent.transport import BrokerSettings, InboundMessage, MqttTransport, Subscription, Will


def _client(broker: MosquittoBroker, client_id: str, inbox: "queue.Queue[InboundMessage]", **kwargs) -> MqttTransport:
    transport = MqttTransport(
        BrokerSettings(host="127.0.0.1", port=broker.port, client_id=client_id, reconnect_min_s=1, reconnect_max_s=2, **kwargs.pop("settings", {})),
        on_message=lambda m: (inbox.put(m), transport.ack(m.ack_token, m.qos)),
        **kwargs,
    )
    return transport


def _next(inbox: "queue.Queue[InboundMessage]", timeout_s: float = 5.0) -> InboundMessage:
    return inbox.get(timeout=timeout_s)


def test_subscribe_and_receive(broker: MosquittoBroker) -> None:
    inbox: queue.Queue[InboundMessage] = queue.Queue()
    sub = _client(broker, "t-sub", inbox, subscriptions=[Subscription("plant/+/+/label", 1)])
    pub = _client(broker, "t-pub", queue.Queue(), subscriptions=[])
    sub.start()
    pub.start()
    try:
        assert sub.wait_connected(5)
        assert pub.wait_connected(5)
        time.sleep(0.2)  # let SUBACK arrive before publishing
        pub.publish("plant/l1/a1/label", b'{"x": 1}', qos=1).wait_for_publish(5)
        message = _next(inbox)
        assert message.topic == "plant/l1/a1/label"
        assert message.payload == b'{"x": 1}'
        assert message.qos == 1
    finally:
        sub.stop()
        pub.stop()


def test_resubscribes_after_broker_restart(broker: MosquittoBroker) -> None:
    inbox: queue.Queue[InboundMessage] = queue.Queue()
    sub = _client(broker, "t-sub2", inbox, subscriptions=[Subscription("plant/+/+/vibration", 1)])
    sub.start()
    try:
        assert sub.wait_connected(5)
        broker.stop()
        deadline = time.monotonic() + 5
        while sub.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sub.connected.is_set()
        broker.start()
        assert sub.wait_connected(15), "client did not reconnect after the broker restart"
        assert sub.connects == 2
        pub = _client(broker, "t-pub2", queue.Queue(), subscriptions=[])
        pub.start()
        assert pub.wait_connected(5)
        time.sleep(0.3)
        pub.publish("plant/l1/a1/vibration", b"after-restart", qos=1).wait_for_publish(5)
        assert _next(inbox).payload == b"after-restart"
        pub.stop()
    finally:
        sub.stop()


def test_last_will_marks_offline(broker: MosquittoBroker) -> None:
    watcher_inbox: queue.Queue[InboundMessage] = queue.Queue()
    watcher = _client(broker, "t-watch", watcher_inbox, subscriptions=[Subscription("edge-agent/+/status", 1)])
    dying = _client(
        broker, "t-dying", queue.Queue(), subscriptions=[],
        will=Will("edge-agent/x/status", b'{"state": "offline"}'), settings={"keepalive_s": 5},
    )
    watcher.start()
    dying.start()
    try:
        assert watcher.wait_connected(5)
        assert dying.wait_connected(5)
        # Drop the socket without DISCONNECT, as a crash would.
        dying._client.socket().close()
        message = _next(watcher_inbox, timeout_s=15)
        assert message.topic == "edge-agent/x/status"
        assert b"offline" in message.payload
    finally:
        watcher.stop()
        dying._client.loop_stop()


def test_set_subscriptions_swaps_filters(broker: MosquittoBroker) -> None:
    inbox: queue.Queue[InboundMessage] = queue.Queue()
    sub = _client(broker, "t-swap", inbox, subscriptions=[Subscription("old/#", 1)])
    pub = _client(broker, "t-swap-pub", queue.Queue(), subscriptions=[])
    sub.start()
    pub.start()
    try:
        assert sub.wait_connected(5)
        assert pub.wait_connected(5)
        sub.set_subscriptions([Subscription("new/#", 1)])
        time.sleep(0.3)
        pub.publish("old/a", b"old", qos=1).wait_for_publish(5)
        pub.publish("new/a", b"new", qos=1).wait_for_publish(5)
        assert _next(inbox).payload == b"new"
        assert inbox.empty()
    finally:
        sub.stop()
        pub.stop()
