"""Generation slots and a bounded queue: the service's only admission control.

A slot is the right to run one generation. At most `slots` run at once; up to `max_queue`
more wait (each for at most `timeout` seconds); anything beyond is refused at once, so the
box degrades into quick 503s with Retry-After instead of piling up threads and memory.
A slot is released exactly once, however the request ends (finished, failed, client gone).
"""

from __future__ import annotations

import threading
import time
from collections import deque


class Overloaded(Exception):
    """No slot could be had: the queue is full or the wait timed out."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Slot:
    def __init__(self, pool: SlotPool, waited_s: float) -> None:
        self._pool = pool
        self.waited_s = waited_s
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._pool._release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class SlotPool:
    """Slots handed out strictly in arrival order: a released slot goes to the oldest waiter,
    never to a thread that happens to ask again first (no request waits behind later ones)."""

    def __init__(self, slots: int, max_queue: int) -> None:
        if slots < 1 or max_queue < 0:
            raise ValueError(f"slots must be >= 1 and max_queue >= 0, got {slots}, {max_queue}")
        self.slots = slots
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._busy = 0
        self._queue: deque[object] = deque()
        # A rough service time, for Retry-After: an exponential average of slot hold times.
        self._avg_hold_s = 5.0

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def retry_after_s(self) -> int:
        per_slot = (len(self._queue) + 1) / self.slots
        return max(1, min(120, round(per_slot * self._avg_hold_s)))

    def acquire(self, timeout: float) -> Slot:
        start = time.monotonic()
        with self._cond:
            if self._busy < self.slots and not self._queue:
                self._busy += 1
                return Slot(self, 0.0)
            if len(self._queue) >= self.max_queue:
                raise Overloaded("queue_full", self.retry_after_s())
            ticket = object()
            self._queue.append(ticket)
            try:
                got = self._cond.wait_for(
                    lambda: self._queue[0] is ticket and self._busy < self.slots, timeout=timeout
                )
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            if not got:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may be able to go now
                raise Overloaded("queue_timeout", self.retry_after_s())
            self._queue.popleft()
            self._busy += 1
            self._cond.notify_all()  # with several slots free, the next in line goes too
            return Slot(self, time.monotonic() - start)

    def _release(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def record_hold(self, seconds: float) -> None:
        self._avg_hold_s = 0.8 * self._avg_hold_s + 0.2 * max(0.0, seconds)
