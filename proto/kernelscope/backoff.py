"""The one retry policy of the project: how long to pause between tries of something that may come back, and
when to stop trying. The SDK retries an unreachable or busy service with it (sdk/client.py), the workers an
unreachable Redis (workers/__main__.py); each passes its own numbers where they differ from the defaults.

Defaults (the SDK's):
    first pause     FIRST_PAUSE_S = 0.1 s
    growth          GROWTH = 2 (each pause doubles the last)
    longest pause   LONGEST_PAUSE_S = 2 s
    total patience  PATIENCE_S = 60 s, counted from the first failure; a pause starts only while some is left,
                    so the last one may end past it (patience 0: never retried)
    jitter          JITTER = 0.5: each pause is scaled by a random factor in [0.5, 1.5), so that many callers
                    refused at once do not all come back at once; the growth itself is not jittered
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

FIRST_PAUSE_S = 0.1
GROWTH = 2.0
LONGEST_PAUSE_S = 2.0
PATIENCE_S = 60.0
JITTER = 0.5


@dataclass
class Backoff:
    """Exponential pauses within a patience measured from the first failure (see the module's defaults)."""

    patience_s: float = PATIENCE_S
    first_s: float = field(default=FIRST_PAUSE_S, kw_only=True)
    growth: float = field(default=GROWTH, kw_only=True)
    longest_s: float = field(default=LONGEST_PAUSE_S, kw_only=True)
    jitter: float = field(default=JITTER, kw_only=True)
    _started: float | None = field(default=None, init=False, repr=False)
    _delay: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A try succeeded: the next failure starts again from the first pause, with the whole patience."""
        self._started = None
        self._delay = self.first_s

    def answered(self) -> None:
        """The other side answered something else: the patience starts afresh, the pauses keep growing."""
        self._started = None

    def waited(self) -> float:
        """Seconds since the first failure (0 before any)."""
        return 0.0 if self._started is None else time.monotonic() - self._started

    def pause(self) -> float | None:
        """The pause to take before the next try (the pauses grow with each call), or None once patience is spent."""
        if self._started is None:
            self._started = time.monotonic()
        if self.waited() >= self.patience_s:
            return None
        pause = self._delay * (1.0 - self.jitter + 2.0 * self.jitter * random.random())
        self._delay = min(self._delay * self.growth, self.longest_s)
        return pause

    def sleep(self) -> bool:
        """Sleep before the next try; False (no sleep) once patience is spent."""
        pause = self.pause()
        if pause is None:
            return False
        time.sleep(pause)
        return True
