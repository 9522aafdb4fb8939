"""CPU-bound request work (image decodes, thumbnail draws) off the ingress event loop.

The ingress answers every request on one asyncio loop; a decode of a tens-of-megapixel
image holds a core for hundreds of milliseconds, and run on the loop it would stall
``/healthz`` and every other tenant's search for that long. :class:`DecodeGate` runs such
work on threads (Pillow releases the GIL while it decodes) and bounds how many run at
once, so a burst of large uploads queues for the gate instead of taking every core
and all the memory their pixels need at the same time.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class DecodeGate:
    """At most ``limit`` calls of :meth:`run` execute at once, each on a worker thread.

    Attributes:
        running: calls executing now; ``peak``: the most ever executing at once.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("a decode gate needs a limit of at least 1")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self.running = self.peak = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread, once a slot is free."""
        async with self._slots:
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                return await asyncio.to_thread(fn, *args)
            finally:
                self.running -= 1
