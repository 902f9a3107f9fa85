from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_agent.features import LOG_SPECTRUM_V1, get_transform, log_spectrum, transformed_length
from edge_agent.model import EmbeddingNet, count_parameters


def test_log_spectrum_shape_and_standardisation():
    windows = torch.randn(3, 2048, generator=torch.Generator().manual_seed(0))

    features = log_spectrum(windows)

    assert features.shape == (3, 1, 1025)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.mean(dim=2), torch.zeros(3, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.std(dim=2), torch.ones(3, 1), atol=1e-4, rtol=0)


def test_log_spectrum_peak_at_tone_frequency():
    sample_rate_hz, size = 12000, 2048
    time_s = torch.arange(size, dtype=torch.float64) / sample_rate_hz
    tone = torch.sin(2 * torch.pi * 1500.0 * time_s).unsqueeze(0)

    features = log_spectrum(tone)

    peak_bin = int(features[0, 0].argmax())
    assert peak_bin * sample_rate_hz / size == pytest.approx(1500, abs=sample_rate_hz / size)


def test_log_spectrum_ignores_signal_level():
    windows = torch.randn(2, 1024, generator=torch.Generator().manual_seed(1))

    quiet = log_spectrum(windows * 1e-3)
    loud = log_spectrum(windows)

    assert quiet.shape == loud.shape
    # log1p is close to linear for small magnitudes, so only the peak positions must agree.
    assert torch.equal(quiet.argmax(dim=2), loud.argmax(dim=2))


def test_log_spectrum_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"windows must have shape \(B, size\), got \(2048,\)"):
        log_spectrum(torch.zeros(2048))


def test_transform_registry():
    assert get_transform(LOG_SPECTRUM_V1) is log_spectrum
    assert transformed_length(LOG_SPECTRUM_V1, 2048) == 1025
    with pytest.raises(KeyError, match=r"unknown input transform 'mfcc_v9'; this version of edge-agent knows log_spectrum_v1"):
        get_transform("mfcc_v9")


def test_embedding_net_shapes_and_size():
    model = EmbeddingNet().eval()

    with torch.no_grad():
        embeddings = model(torch.randn(5, 1, 1025))

    assert embeddings.shape == (5, 64)
    assert model.embedding_dim == 64
    assert count_parameters(model) == 79_888
    assert model.config == {
        "in_channels": 1,
        "channels": [16, 32, 64, 64],
        "kernel_size": 7,
        "pool": 4,
        "embedding_dim": 64,
        "pooled_length": 8,
    }


def test_embedding_net_accepts_other_lengths():
    model = EmbeddingNet(channels=(4, 8), embedding_dim=6).eval()

    with torch.no_grad():
        assert model(torch.randn(2, 1, 513)).shape == (2, 6)
        assert model(torch.randn(2, 1, 7)).shape == (2, 6)


def test_embedding_net_pinned_output():
    torch.manual_seed(0)
    model = EmbeddingNet(channels=(4, 8), kernel_size=3, embedding_dim=3).eval()
    sample_index = np.arange(256)
    windows = torch.as_tensor(
        np.stack([np.sin(0.3 * sample_index), np.sin(1.9 * sample_index) + 0.1 * np.cos(0.5 * sample_index)]),
        dtype=torch.float32,
    )

    with torch.no_grad():
        embeddings = model(log_spectrum(windows))

    expected = torch.tensor(PINNED_EMBEDDINGS)
    torch.testing.assert_close(embeddings, expected, atol=1e-4, rtol=0)


def test_embedding_net_rejects_bad_architecture():
    with pytest.raises(ValueError, match=r"kernel_size must be odd for same padding, got 4"):
        EmbeddingNet(kernel_size=4)
    with pytest.raises(ValueError, match=r"channels must list at least one block width"):
        EmbeddingNet(channels=())


PINNED_EMBEDDINGS = [[-0.03353, 0.02257, 0.01466], [-0.11247, 0.05357, -0.09437]]
