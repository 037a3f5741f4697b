"""Simulated feeder readings with labelled anomalies.

The simulator is the only data source GridWatch has: the model is trained on its normal readings, the evaluation
and the UI stream its labelled anomalies. It therefore tries to look like a real low-voltage feeder measured once
per ``interval_s``:

* **current** follows a daily load curve (night trough, morning and evening peaks) with multiplicative noise;
* **voltage** sits at the nominal value, drops with load through the line impedance, plus sensor noise;
* **frequency** wanders around nominal as a mean-reverting (Ornstein-Uhlenbeck) process, the way grid frequency
  drifts with the balance of generation and load rather than jumping independently every second.

Anomalies are injected per reading with probability ``anomaly_rate``; every reading carries its ground truth
(``is_anomaly``, ``anomaly_kind``) so detectors can be scored. Values are rounded to a plausible sensor resolution.

This module depends on NumPy only: the UI image imports it and must not need scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np

from app import FEATURES


class AnomalyKind(StrEnum):
    """The kinds of fault the simulator can inject, each a physically distinct grid event."""

    VOLTAGE_SPIKE = "voltage_spike"
    """Over-voltage of 10 to 30 % (above the EN 50160 +10 % band), e.g. switching transients, lost neutral."""
    VOLTAGE_SAG = "voltage_sag"
    """Under-voltage to 55 to 88 % of nominal, e.g. a fault elsewhere on the feeder or a large motor start."""
    FREQUENCY_EXCURSION = "frequency_excursion"
    """Frequency 0.2 to 1.2 Hz (at 50 Hz) away from nominal: loss of a large generator or load."""
    CURRENT_SURGE = "current_surge"
    """Current at 1.5 to 3 times the feeder's daily peak, with the voltage drop it causes: a short or overload."""
    EXTREME = "extreme"
    """Everything far out of range at once; what the UI's "Inject Extreme Reading" button sends."""


FAULTY_FEATURE: dict[AnomalyKind, str] = {
    AnomalyKind.VOLTAGE_SPIKE: "voltage",
    AnomalyKind.VOLTAGE_SAG: "voltage",
    AnomalyKind.CURRENT_SURGE: "current",
    AnomalyKind.FREQUENCY_EXCURSION: "frequency",
}
"""The quantity each single-feature fault puts out of line, what an explanation should name first (a current surge
drags the voltage down too, as on a real feeder: the current is still its cause)."""


DEFAULT_ANOMALY_KINDS: tuple[AnomalyKind, ...] = (
    AnomalyKind.VOLTAGE_SPIKE,
    AnomalyKind.VOLTAGE_SAG,
    AnomalyKind.FREQUENCY_EXCURSION,
    AnomalyKind.CURRENT_SURGE,
)
"""Kinds injected at random by default; ``EXTREME`` is only sent on purpose."""


@dataclass(frozen=True)
class GridProfile:
    """Nominal values and noise of the simulated feeder. Defaults describe a European 230 V / 50 Hz feeder."""

    nominal_voltage: float = 230.0
    """Phase-to-neutral RMS voltage in volts."""
    voltage_noise: float = 1.0
    """Standard deviation of voltage sensor noise in volts."""
    line_impedance: float = 0.15
    """Voltage drop per ampere of load above the mean, in ohms; couples voltage to the load curve."""
    nominal_frequency: float = 50.0
    """Grid frequency in hertz (60 for North America)."""
    frequency_std: float = 0.02
    """Stationary standard deviation of the frequency around nominal, in hertz."""
    frequency_correlation_s: float = 30.0
    """Correlation time of frequency deviations in seconds (how slowly the frequency wanders)."""
    night_current: float = 6.0
    """Current at the night-time minimum of the load curve, in amperes."""
    peak_current: float = 20.0
    """Current at the evening peak of the load curve, in amperes."""
    current_noise: float = 0.05
    """Relative (multiplicative) noise of the current."""
    voltage_decimals: int = 2
    current_decimals: int = 3
    frequency_decimals: int = 4
    """Sensor resolution as decimal places (0.01 V, 1 mA, 0.1 mHz): values are rounded as a meter reports them."""

    @classmethod
    def north_american(cls) -> GridProfile:
        """A 120 V / 60 Hz split-phase service: same shape, different nominal values."""
        return cls(nominal_voltage=120.0, voltage_noise=0.5, line_impedance=0.08, nominal_frequency=60.0)

    def daily_load(self, hour_of_day: np.ndarray) -> np.ndarray:
        """Mean current in amperes at the given hour(s) of the day (UTC, fractional).

        A residential shape: trough around 04:00, a morning peak near 07:30, a daytime plateau and the highest
        peak near 19:00. Normalised so the curve spans exactly ``night_current`` .. ``peak_current``.
        """
        shape = _daily_shape(hour_of_day)
        return self.night_current + (self.peak_current - self.night_current) * shape

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _circular_bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A Gaussian bump on the 24-hour circle, so 23:00 and 01:00 are two hours apart."""
    distance = np.abs((hours - centre + 12.0) % 24.0 - 12.0)
    return np.exp(-0.5 * (distance / width) ** 2)


def _raw_shape(hours: np.ndarray) -> np.ndarray:
    return (
        0.55 * _circular_bump(hours, 7.5, 1.3)
        + 0.35 * _circular_bump(hours, 13.0, 3.5)
        + 1.0 * _circular_bump(hours, 19.0, 2.0)
    )


_SHAPE_GRID = _raw_shape(np.linspace(0.0, 24.0, 24 * 60, endpoint=False))
_SHAPE_MIN, _SHAPE_MAX = float(_SHAPE_GRID.min()), float(_SHAPE_GRID.max())


def _daily_shape(hours: np.ndarray) -> np.ndarray:
    """The load curve scaled to 0 at its minimum and 1 at its maximum."""
    return (_raw_shape(np.asarray(hours, dtype=np.float64)) - _SHAPE_MIN) / (_SHAPE_MAX - _SHAPE_MIN)


@dataclass(frozen=True)
class ReadingBatch:
    """A batch of readings as columns; ``features()`` gives the model input in ``FEATURES`` order."""

    timestamp: np.ndarray
    """Seconds since the Unix epoch (UTC), float64."""
    voltage: np.ndarray
    current: np.ndarray
    frequency: np.ndarray
    is_anomaly: np.ndarray
    """Ground truth: True where an anomaly was injected."""
    anomaly_kind: tuple[str | None, ...]
    """The injected kind per reading (an ``AnomalyKind`` value), None for normal readings."""

    def __len__(self) -> int:
        return int(self.timestamp.shape[0])

    def features(self) -> np.ndarray:
        """An ``(n, 3)`` float64 array in ``FEATURES`` order, ready for the model."""
        return np.column_stack([getattr(self, name) for name in FEATURES])

    def to_records(self, *, ground_truth: bool = True) -> list[dict[str, object]]:
        """JSON-ready dicts: ``{timestamp, voltage, current, frequency[, is_anomaly, anomaly_kind]}``.

        Timestamps are ISO 8601 in UTC with millisecond precision. The API ignores the extra fields, so records
        with ground truth can be posted to ``/predict`` as they are.
        """
        records = []
        for i in range(len(self)):
            record: dict[str, object] = {
                "timestamp": _iso(float(self.timestamp[i])),
                "voltage": float(self.voltage[i]),
                "current": float(self.current[i]),
                "frequency": float(self.frequency[i]),
            }
            if ground_truth:
                record["is_anomaly"] = bool(self.is_anomaly[i])
                record["anomaly_kind"] = self.anomaly_kind[i]
            records.append(record)
        return records

    @staticmethod
    def concatenate(batches: Sequence[ReadingBatch]) -> ReadingBatch:
        """Join batches in order (e.g. the pieces of a stream)."""
        return ReadingBatch(
            timestamp=np.concatenate([b.timestamp for b in batches]),
            voltage=np.concatenate([b.voltage for b in batches]),
            current=np.concatenate([b.current for b in batches]),
            frequency=np.concatenate([b.frequency for b in batches]),
            is_anomaly=np.concatenate([b.is_anomaly for b in batches]),
            anomaly_kind=tuple(kind for b in batches for kind in b.anomaly_kind),
        )


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class GridSimulator:
    """A seedable, stateful feeder: consecutive ``batch()`` calls continue the clock and the frequency walk.

    ``anomaly_rate`` is the probability that any one reading is anomalous; the kind is drawn uniformly from
    ``anomaly_kinds``. The same ``seed`` and call sequence always give the same readings.
    """

    profile: GridProfile = field(default_factory=GridProfile)
    anomaly_rate: float = 0.0
    anomaly_kinds: Sequence[AnomalyKind | str] = DEFAULT_ANOMALY_KINDS
    interval_s: float = 1.0
    start: datetime | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be within [0, 1], got {self.anomaly_rate}")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {self.interval_s}")
        self.anomaly_kinds = tuple(AnomalyKind(kind) for kind in self.anomaly_kinds)
        if self.anomaly_rate > 0 and not self.anomaly_kinds:
            raise ValueError("anomaly_kinds must not be empty when anomaly_rate > 0")
        self._rng = np.random.default_rng(self.seed)
        start = self.start or datetime.now(tz=UTC).replace(microsecond=0)
        self._next_time = start.timestamp()
        # Start the frequency walk in its stationary distribution, so the first readings are not special.
        self._frequency_deviation = float(self._rng.normal(0.0, self.profile.frequency_std))

    def batch(self, n: int, *, kind: AnomalyKind | str | None = None) -> ReadingBatch:
        """The next ``n`` readings. With ``kind`` given, every reading is an anomaly of that kind."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        profile = self.profile
        timestamp = self._next_time + self.interval_s * np.arange(n, dtype=np.float64)
        self._next_time += self.interval_s * n

        hours = (timestamp % 86_400.0) / 3_600.0
        mean_current = profile.daily_load(hours)
        current = mean_current * (1.0 + profile.current_noise * self._rng.standard_normal(n))
        average_current = 0.5 * (profile.night_current + profile.peak_current)
        voltage = (
            profile.nominal_voltage
            - profile.line_impedance * (current - average_current)
            + profile.voltage_noise * self._rng.standard_normal(n)
        )
        frequency = profile.nominal_frequency + self._frequency_walk(n)

        if kind is not None:
            is_anomaly = np.ones(n, dtype=bool)
            kinds = np.full(n, AnomalyKind(kind).value, dtype=object)
        else:
            is_anomaly = self._rng.random(n) < self.anomaly_rate
            kinds = np.full(n, None, dtype=object)
            if is_anomaly.any():
                choices = np.array([AnomalyKind(k).value for k in self.anomaly_kinds], dtype=object)
                kinds[is_anomaly] = self._rng.choice(choices, size=int(is_anomaly.sum()))
        for anomaly in AnomalyKind:
            mask = kinds == anomaly.value
            if mask.any():
                _inject(
                    anomaly,
                    mask=mask,
                    voltage=voltage,
                    current=current,
                    frequency=frequency,
                    profile=profile,
                    rng=self._rng,
                )

        return ReadingBatch(
            timestamp=timestamp,
            voltage=np.round(voltage, profile.voltage_decimals),
            current=np.round(np.maximum(current, 0.0), profile.current_decimals),
            frequency=np.round(frequency, profile.frequency_decimals),
            is_anomaly=is_anomaly,
            anomaly_kind=tuple(kinds.tolist()),
        )

    def extreme(self) -> ReadingBatch:
        """One reading far out of every normal range (the UI's inject button)."""
        return self.batch(1, kind=AnomalyKind.EXTREME)

    def stream(self, batch_size: int, n_batches: int | None = None) -> Iterator[ReadingBatch]:
        """Consecutive batches of ``batch_size`` readings; endless unless ``n_batches`` is given."""
        emitted = 0
        while n_batches is None or emitted < n_batches:
            yield self.batch(batch_size)
            emitted += 1

    def readings(self) -> Iterator[dict[str, object]]:
        """An endless stream of single readings as JSON-ready dicts."""
        while True:
            yield from self.batch(256).to_records()

    def _frequency_walk(self, n: int) -> np.ndarray:
        """Continue the Ornstein-Uhlenbeck frequency deviation for ``n`` steps of ``interval_s``.

        The AR(1) recursion ``x[t+1] = phi * x[t] + e[t]`` is evaluated in closed form per block of 64 steps
        (``x[j] = phi**j * (x0 + sum_k phi**-k e[k])``), vectorised, with blocks short enough that ``phi**-64``
        cannot lose precision.
        """
        profile = self.profile
        phi = math.exp(-self.interval_s / profile.frequency_correlation_s)
        innovation_std = profile.frequency_std * math.sqrt(1.0 - phi * phi)
        out = np.empty(n, dtype=np.float64)
        block = 64
        steps = np.arange(1, block + 1, dtype=np.float64)
        growth, decay = phi**-steps, phi**steps
        x0 = self._frequency_deviation
        for start in range(0, n, block):
            m = min(block, n - start)
            innovations = innovation_std * self._rng.standard_normal(m)
            values = decay[:m] * (x0 + np.cumsum(growth[:m] * innovations))
            out[start : start + m] = values
            x0 = float(values[-1])
        self._frequency_deviation = x0
        return out


def _inject(
    kind: AnomalyKind,
    *,
    mask: np.ndarray,
    voltage: np.ndarray,
    current: np.ndarray,
    frequency: np.ndarray,
    profile: GridProfile,
    rng: np.random.Generator,
) -> None:
    """Overwrite the masked readings in place with a fault of the given kind."""
    count = int(mask.sum())
    if kind is AnomalyKind.VOLTAGE_SPIKE:
        voltage[mask] = profile.nominal_voltage * rng.uniform(1.10, 1.30, count)
    elif kind is AnomalyKind.VOLTAGE_SAG:
        voltage[mask] = profile.nominal_voltage * rng.uniform(0.55, 0.88, count)
    elif kind is AnomalyKind.FREQUENCY_EXCURSION:
        size = rng.uniform(0.2, 1.2, count) * profile.nominal_frequency / 50.0
        frequency[mask] = profile.nominal_frequency + rng.choice([-1.0, 1.0], count) * size
    elif kind is AnomalyKind.CURRENT_SURGE:
        surge = profile.peak_current * rng.uniform(1.5, 3.0, count)
        voltage[mask] -= profile.line_impedance * (surge - current[mask])
        current[mask] = surge
    elif kind is AnomalyKind.EXTREME:
        voltage[mask] = profile.nominal_voltage * rng.uniform(1.7, 1.9, count)
        current[mask] = profile.peak_current * rng.uniform(8.0, 12.0, count)
        frequency[mask] = profile.nominal_frequency * rng.uniform(0.88, 0.92, count)
