"""edge-agent: few-shot machine-fault diagnosis on factory edge boxes, over MQTT."""

__version__ = "0.1.0"
