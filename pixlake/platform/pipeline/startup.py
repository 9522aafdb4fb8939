"""Start a job's parts at once.

Each part (an owner actor, the claim shards, the read stage) mostly waits: for a worker
process to start, for a constructor, for a metadata task. Started one after another they
added seconds before the first batch; started together they cost about the slowest one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


def start_concurrently(starts: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Call every start function at once, each in its own thread (Ray's API is thread-safe).

    Args:
        starts: name → a function returning the started part; a part with a ``shutdown()``
            method is shut down again when another part fails.

    Returns:
        name → the part, for every name.

    Raises:
        The first failure in ``starts``' order (so the order says whose error a user sees
        when several fail), after every part that did start is shut down.
    """
    with ThreadPoolExecutor(len(starts) or 1) as pool:
        futures = {name: pool.submit(start) for name, start in starts.items()}
    failures = [f.exception() for f in futures.values() if f.exception() is not None]
    if not failures:
        return {name: f.result() for name, f in futures.items()}
    for f in futures.values():
        if f.exception() is None and hasattr(f.result(), "shutdown"):
            try:
                f.result().shutdown()
            except Exception:  # already failing: the first failure is the one to report
                pass
    raise failures[0]
