"""The rolling window behind the live charts: the latest N scored readings, oldest dropped first.

A stream runs for as long as the page is open, so the charts must not grow without bound: the window keeps a
fixed number of rows (the sidebar's "Window" setting) however many readings have been streamed. The counters and
the detector statistics are cumulative and live elsewhere (``ui.detection``), so shrinking the window never
changes them.
"""

from __future__ import annotations

import pandas as pd


class RollingWindow:
    """The last ``capacity`` rows appended, in order, as one DataFrame."""

    def __init__(self, capacity: int) -> None:
        self._capacity = _valid_capacity(capacity)
        self._frame: pd.DataFrame | None = None

    @property
    def capacity(self) -> int:
        return self._capacity

    def resize(self, capacity: int) -> None:
        """Change the capacity; shrinking keeps the newest rows, growing keeps everything there is."""
        self._capacity = _valid_capacity(capacity)
        if self._frame is not None and len(self._frame) > self._capacity:
            self._frame = self._frame.iloc[-self._capacity :].reset_index(drop=True)

    def append(self, rows: pd.DataFrame) -> None:
        """Add rows at the end, dropping the oldest beyond the capacity (also from a batch larger than it)."""
        if rows.empty:
            return
        if self._frame is None or self._frame.empty:
            combined = rows
        else:
            combined = pd.concat([self._frame, rows], ignore_index=True)
        self._frame = combined.iloc[-self._capacity :].reset_index(drop=True)

    def clear(self) -> None:
        self._frame = None

    @property
    def frame(self) -> pd.DataFrame:
        """The rows in the window, oldest first (an empty DataFrame before the first append)."""
        return self._frame if self._frame is not None else pd.DataFrame()

    def __len__(self) -> int:
        return 0 if self._frame is None else len(self._frame)


def _valid_capacity(capacity: int) -> int:
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    return int(capacity)
