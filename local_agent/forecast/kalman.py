"""Local linear trend Kalman filter (level + slope), written with numpy.

The trend state removes the one-interval lag of last value on ramps. Noise variances are set as
ratios to the measurement noise and the common scale is re-estimated from the innovations
(EWMA of the standardised squared innovation), so one setting works for 0.1 or 10,000 req/s.
"""

from __future__ import annotations

import math

import numpy as np

from local_agent.forecast.base import Predictor, normal_z

_F = np.array([[1.0, 1.0], [0.0, 1.0]])


class KalmanPredictor(Predictor):
    """Level + slope state; upper from the Gaussian predictive variance at each horizon.

    ``level_noise`` and ``slope_noise`` are process-noise variances relative to the measurement
    noise: larger means faster tracking and more noise passed through. ``adapt`` is the EWMA rate of
    the noise-scale estimate; ``prior_cv`` sets the initial noise (as a fraction of the first value)
    until innovations arrive.
    """

    name = "kalman"

    def __init__(
        self,
        *,
        interval_s: float,
        quantile: float = 0.9,
        level_noise: float = 0.1,
        slope_noise: float = 0.002,
        adapt: float = 0.05,
        prior_cv: float = 0.1,
    ) -> None:
        super().__init__(interval_s=interval_s, quantile=quantile)
        for label, number in (("level_noise", level_noise), ("slope_noise", slope_noise), ("prior_cv", prior_cv)):
            if not (math.isfinite(number) and number > 0):
                raise ValueError(f"{label} must be > 0, got {number!r}")
        if not 0 < adapt <= 1:
            raise ValueError(f"adapt must be in (0, 1], got {adapt!r}")
        self._q = np.diag([level_noise, slope_noise])
        self._adapt = adapt
        self._prior_cv = prior_cv
        self._z = normal_z(quantile)
        self._x = np.zeros(2)
        self._p = np.eye(2)
        self._scale = 0.0
        self._innovations = 0
        self._has_state = False

    def _update(self, value: float) -> None:
        if not self._has_state:
            self._x = np.array([value, 0.0])
            self._p = np.diag([1.0, self._q[1, 1] * 10.0])
            self._scale = (self._prior_cv * value) ** 2
            self._has_state = True
            return
        x = _F @ self._x
        p = _F @ self._p @ _F.T + self._q
        innovation = value - x[0]
        s = p[0, 0] + 1.0
        self._innovations += 1
        rate = max(self._adapt, 1.0 / (self._innovations + 1))
        self._scale = (1.0 - rate) * self._scale + rate * innovation * innovation / s
        gain = p[:, 0] / s
        self._x = x + gain * innovation
        self._p = p - np.outer(gain, p[0, :])

    def _path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        means = np.empty(steps)
        variances = np.empty(steps)
        x, p = self._x, self._p
        for k in range(steps):
            x = _F @ x
            p = _F @ p @ _F.T + self._q
            means[k] = x[0]
            variances[k] = self._scale * (p[0, 0] + 1.0)
        return means, means + self._z * np.sqrt(variances)
