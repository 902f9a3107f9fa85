"""Rolling-element bearing geometry and its characteristic fault frequencies.

For a bearing with `n` rolling elements of diameter `d` on a pitch circle of diameter
`D`, contact angle `phi`, stationary outer race and the inner race turning with the
shaft at `f_r` Hz (Randall and Antoni, "Rolling element bearing diagnostics - A
tutorial", Mechanical Systems and Signal Processing 25 (2011) 485-520):

    FTF  = f_r / 2 * (1 - d/D cos phi)                 cage (fundamental train)
    BPFO = n f_r / 2 * (1 - d/D cos phi)               ball pass, outer race
    BPFI = n f_r / 2 * (1 + d/D cos phi)               ball pass, inner race
    BSF  = D / (2 d) * f_r * (1 - (d/D cos phi)^2)     ball spin

The real frequencies differ from these by 1-2 % because the rolling elements slip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BearingGeometry:
    """Geometry of a rolling-element bearing; the two diameters share one unit."""

    n_balls: int
    ball_diameter: float
    pitch_diameter: float
    contact_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.n_balls < 3:
            raise ValueError(f"n_balls must be at least 3, got {self.n_balls}")
        if not 0 < self.ball_diameter < self.pitch_diameter:
            raise ValueError(
                f"ball_diameter must be positive and smaller than pitch_diameter, "
                f"got {self.ball_diameter} and {self.pitch_diameter}"
            )
        if not 0 <= self.contact_angle_deg < 90:
            raise ValueError(f"contact_angle_deg must be in [0, 90), got {self.contact_angle_deg}")

    @property
    def diameter_ratio(self) -> float:
        """d/D cos(phi), the ratio that every fault frequency depends on."""
        return self.ball_diameter / self.pitch_diameter * math.cos(math.radians(self.contact_angle_deg))


# The CWRU drive-end bearing, SKF 6205-2RS JEM deep-groove ball bearing, diameters in
# inches, from the Case Western Reserve University Bearing Data Center's page on the
# test rig's bearings (https://engineering.case.edu/bearingdatacenter).
SKF_6205 = BearingGeometry(n_balls=9, ball_diameter=0.3126, pitch_diameter=1.537, contact_angle_deg=0.0)


@dataclass(frozen=True)
class FaultFrequencies:
    """Characteristic frequencies in Hz at one shaft speed."""

    shaft_hz: float
    ftf_hz: float
    bpfo_hz: float
    bpfi_hz: float
    bsf_hz: float


def fault_frequencies(geometry: BearingGeometry, shaft_hz: float) -> FaultFrequencies:
    """Compute FTF, BPFO, BPFI and BSF for `geometry` turning at `shaft_hz`."""
    if shaft_hz <= 0:
        raise ValueError(f"shaft_hz must be positive, got {shaft_hz}")
    ratio = geometry.diameter_ratio
    n = geometry.n_balls
    return FaultFrequencies(
        shaft_hz=shaft_hz,
        ftf_hz=shaft_hz / 2 * (1 - ratio),
        bpfo_hz=n * shaft_hz / 2 * (1 - ratio),
        bpfi_hz=n * shaft_hz / 2 * (1 + ratio),
        bsf_hz=geometry.pitch_diameter / (2 * geometry.ball_diameter) * shaft_hz * (1 - ratio**2),
    )
