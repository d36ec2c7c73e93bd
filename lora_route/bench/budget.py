"""The run's wall-clock budget: once it is spent, measurements that have not started are recorded as skipped, so a
run cut short by its budget still writes every result it has (a GPU is lent for minutes, not hours)."""
from __future__ import annotations

import time


class TimeBudget:
    """``seconds`` of wall-clock time from construction (None: unlimited)."""

    def __init__(self, seconds: float | None):
        if seconds is not None and seconds <= 0:
            raise ValueError(f"a time budget must be > 0 seconds (or None for none), got {seconds}")
        self.seconds = seconds
        self._deadline = None if seconds is None else time.monotonic() + seconds

    def spent(self) -> bool:
        """True once the budget has run out."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def skip_reason(self) -> str:
        """The reason recorded for a measurement skipped because the budget ran out."""
        return f"the run's time budget of {self.seconds:g} s ran out before this measurement"
