"""Loaders for public vibration datasets used to meta-train edge-agent models."""

from edge_agent.datasets.cwru import CWRU_SOURCE_URL, Recording, load_cwru

__all__ = ["CWRU_SOURCE_URL", "Recording", "load_cwru"]
