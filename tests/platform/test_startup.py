"""start_concurrently: the job's parts start together, and a failure leaves nothing running."""

from __future__ import annotations

import threading

import pytest

from pixlake.platform.pipeline.startup import start_concurrently


class Part:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def shutdown(self) -> None:
        self.log.append(self.name)


def test_parts_start_at_the_same_time():
    both = threading.Barrier(2, timeout=10)  # each start waits for the other: serial starts would time out

    def start(name):
        both.wait()
        return name

    assert start_concurrently({"a": lambda: start("a"), "b": lambda: start("b"), "none": lambda: None}) == {
        "a": "a", "b": "b", "none": None}


def test_a_failure_shuts_down_what_started_and_the_first_failure_in_order_wins():
    shut: list = []

    def fail(kind):
        raise kind("boom")

    with pytest.raises(KeyError):
        start_concurrently({"store": lambda: Part("store", shut), "governance": lambda: fail(KeyError),
                            "stats": lambda: Part("stats", shut), "claims": lambda: fail(ValueError),
                            "dataset": lambda: object()})
    assert sorted(shut) == ["stats", "store"]


def test_a_failing_shutdown_does_not_hide_the_start_failure():
    class Stuck(Part):
        def shutdown(self):
            raise RuntimeError("actor already gone")

    with pytest.raises(ValueError, match="no key"):
        start_concurrently({"store": lambda: Stuck("s", []), "governance": lambda: (_ for _ in ()).throw(ValueError("no key"))})
