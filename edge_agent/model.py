"""The 1-D convolutional embedding network of edge-agent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class EmbeddingNet(nn.Module):
    """A small 1-D CNN that maps a spectrum to an embedding vector.

    Each block is Conv1d (same padding) -> BatchNorm1d -> ReLU -> MaxPool1d(pool). The last
    block is followed by adaptive average pooling to `pooled_length` frequency bands and a
    linear layer. Keeping a few bands, rather than one global average, keeps the coarse
    frequency position of spectral peaks, which is what separates fault types. The
    adaptive pooling accepts any input length, but a checkpoint is only valid for the
    window size it was trained on.

    Shapes: input (B, in_channels, n_bins) float32 -> output (B, embedding_dim).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 64),
        kernel_size: int = 7,
        pool: int = 4,
        embedding_dim: int = 64,
        pooled_length: int = 8,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must list at least one block width")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for same padding, got {kernel_size}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "channels": [int(width) for width in channels],
            "kernel_size": kernel_size,
            "pool": pool,
            "embedding_dim": embedding_dim,
            "pooled_length": pooled_length,
        }

        blocks: list[nn.Module] = []
        width_in = in_channels
        for width in channels:
            blocks += [
                nn.Conv1d(width_in, width, kernel_size, padding=kernel_size // 2, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(pool, ceil_mode=True),
            ]
            width_in = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(pooled_length)
        self.head = nn.Linear(width_in * pooled_length, embedding_dim)

    @property
    def embedding_dim(self) -> int:
        return int(self.config["embedding_dim"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch: (B, in_channels, n_bins) -> (B, embedding_dim)."""
        hidden = self.features(x)
        pooled = self.pool(hidden).flatten(start_dim=1)
        return self.head(pooled)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
