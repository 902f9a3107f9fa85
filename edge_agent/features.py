"""Input transforms from raw vibration windows to model inputs.

Each transform has a versioned name that goes into checkpoint metadata, so a model is
always fed the input it was trained on. Change a transform's output only under a new name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LOG_SPECTRUM_V1 = "log_spectrum_v1"
_EPSILON = 1e-6


def log_spectrum(windows: torch.Tensor) -> torch.Tensor:
    """Compute the standardised log-magnitude spectrum of each window.

    Each window of shape (size,) gets a Hann taper, a real FFT and log1p of the magnitude,
    and the resulting size // 2 + 1 bins are scaled to zero mean and unit variance per
    window. The standardisation removes the overall vibration level, which changes with
    sensor gain and mounting, and keeps the shape of the spectrum.

    Shapes: (B, size) -> (B, 1, size // 2 + 1), float32 on the input's device.
    """
    if windows.ndim != 2:
        raise ValueError(f"windows must have shape (B, size), got {tuple(windows.shape)}")
    windows = windows.to(torch.float32)
    size = windows.shape[1]

    taper = torch.hann_window(size, periodic=False, dtype=torch.float32, device=windows.device)
    magnitude = torch.fft.rfft(windows * taper, dim=1).abs()
    spectrum = torch.log1p(magnitude)

    mean = spectrum.mean(dim=1, keepdim=True)
    std = spectrum.std(dim=1, keepdim=True)
    return ((spectrum - mean) / (std + _EPSILON)).unsqueeze(1)


INPUT_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    LOG_SPECTRUM_V1: log_spectrum,
}


def get_transform(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the input transform registered as `name`.

    Raises KeyError naming the known transforms when `name` is unknown.
    """
    try:
        return INPUT_TRANSFORMS[name]
    except KeyError:
        raise KeyError(
            f"unknown input transform {name!r}; this version of edge-agent knows "
            f"{', '.join(sorted(INPUT_TRANSFORMS))}"
        ) from None


def transformed_length(name: str, window_size: int) -> int:
    """Return the number of feature bins that transform `name` makes from one window."""
    get_transform(name)
    return window_size // 2 + 1
