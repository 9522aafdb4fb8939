"""Helpers shared by the HTTP benchmarks (run as ``python bench/<name>.py``, so this
directory is on ``sys.path``)."""

from __future__ import annotations

import socket

import numpy as np


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile of xs (NaN when empty)."""
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")
