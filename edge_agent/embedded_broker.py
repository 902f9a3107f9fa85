"""An MQTT broker inside this process, for the demo on a machine without Mosquitto.

`start_demo_broker` prefers Mosquitto when it is installed and otherwise runs amqtt, a
pure-Python asyncio broker from PyPI, on its own event loop in a background thread.
Both listen on 127.0.0.1 only.

Limitations: amqtt 0.12 speaks MQTT 3.1.1 only, so an agent connected to it must set
`mqtt.protocol: "3.1.1"`, and sessions do not survive a restart of the broker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Protocol

from edge_agent.broker import LOOPBACK, MosquittoBroker, free_loopback_port, mosquitto_path
from edge_agent.errors import TransportError

log = logging.getLogger(__name__)


class DemoBroker(Protocol):
    """A broker the demo started and must close: its URL, MQTT version and name."""

    port: int
    protocol: str
    name: str

    @property
    def url(self) -> str: ...

    def close(self) -> None: ...


class AmqttBroker:
    """amqtt on 127.0.0.1:`port`, served by an event loop in a daemon thread."""

    protocol = "3.1.1"
    name = "amqtt (embedded, pure Python)"

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_loopback_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: object | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def _config(self) -> dict[str, object]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{self.port}"}},
            # Anonymous login only. The $SYS and logging plugins are left out because
            # the demo reads no $SYS topics and the packet logger costs CPU per packet.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def start(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        self._started.wait(timeout_s)
        if self._error is not None:
            raise TransportError(f"amqtt failed to listen on {LOOPBACK}:{self.port}: {self._error}") from self._error
        if not self._started.is_set():
            self.close()
            raise TransportError(f"amqtt did not listen on {LOOPBACK}:{self.port} within {timeout_s} s")

    def _serve(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            broker = Broker(self._config(), loop=loop)
            self._broker = broker
            loop.run_until_complete(broker.start())
        except Exception as exc:  # reported to start() in the caller's thread
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    def close(self, timeout_s: float = 10.0) -> None:
        loop, broker, thread = self._loop, self._broker, self._thread
        if loop is None or thread is None:
            return
        if broker is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)  # type: ignore[attr-defined]
            try:
                future.result(timeout_s)
            except Exception as exc:  # logged, not raised, because close() runs during cleanup
                log.warning("amqtt did not shut down cleanly: %s", exc)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        self._thread = None
        self._loop = None

    def __enter__(self) -> "AmqttBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MosquittoDemoBroker:
    """A `MosquittoBroker` with the fields of `DemoBroker`."""

    protocol = "5"
    name = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        self._server = MosquittoBroker(workdir)
        self._server.start()
        self.port = self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    def close(self) -> None:
        self._server.close()


def start_demo_broker(workdir: Path, prefer: str = "auto") -> DemoBroker:
    """Start a broker on a free loopback port: Mosquitto when installed, else amqtt.

    `prefer` is "auto", "mosquitto" or "amqtt". Raises TransportError when the chosen
    broker cannot start.
    """
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"prefer must be auto, mosquitto or amqtt, got {prefer!r}")
    if prefer == "mosquitto" or (prefer == "auto" and mosquitto_path() is not None):
        return _MosquittoDemoBroker(workdir / "broker")
    broker = AmqttBroker()
    broker.start()
    return broker
