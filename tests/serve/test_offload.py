"""The decode gate as a plain asyncio object: work leaves the event loop, and at most
``limit`` run at once (no Serve needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pixlake.serve.offload import DecodeGate


def test_decodes_run_off_the_event_loop_and_at_most_limit_at_once():
    gate, running, peak, threads = DecodeGate(2), [0], [0], set()
    lock = threading.Lock()

    def decode(i: int) -> int:  # stands in for a large image's decode: holds its thread
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        threads.add(threading.get_ident())
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return i * i

    async def main() -> tuple[list[int], int]:
        ticks = 0

        async def ticker() -> None:  # what /healthz needs: the loop keeps turning meanwhile
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        results = await asyncio.gather(*(gate.run(decode, i) for i in range(6)))
        beat.cancel()
        return results, ticks

    loop_thread = threading.get_ident()
    results, ticks = asyncio.run(main())
    assert results == [i * i for i in range(6)]
    assert peak[0] == gate.peak == 2  # six queued, two at a time
    assert loop_thread not in threads
    assert ticks >= 10  # 0.6 s of decodes: a blocked loop would not have ticked at all


def test_a_gate_needs_a_slot():
    with pytest.raises(ValueError):
        DecodeGate(0)
