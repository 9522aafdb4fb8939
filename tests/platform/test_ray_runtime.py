"""init_ray / start_ray: a local start that times out is tried once more; nothing else is retried."""

from __future__ import annotations

import pytest
import ray

from pixlake.platform.ray_runtime import LOCAL_START_TRIES, init_ray, start_ray


@pytest.fixture
def starts(monkeypatch):
    """Record ray.init calls; each raises the next queued error (a real start never happens)."""
    calls, errors = [], []

    def fake_init(**kwargs):
        calls.append(kwargs)
        if errors:
            raise errors.pop(0)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls, errors


@pytest.mark.parametrize("error", [
    RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y"),
    Exception("The current node timed out during startup. This could happen because some of the raylet failed"),
])
def test_a_timed_out_local_start_is_started_again(starts, error):
    calls, errors = starts
    errors.append(error)
    init_ray()
    assert len(calls) == 2 and calls[0]["address"] is None


def test_it_gives_up_after_the_last_try(starts):
    calls, errors = starts
    errors.extend(RuntimeError("Timed out waiting for file") for _ in range(LOCAL_START_TRIES))
    with pytest.raises(RuntimeError, match="Timed out"):
        init_ray()
    assert len(calls) == LOCAL_START_TRIES


def test_other_errors_and_joining_a_cluster_are_not_retried(starts, monkeypatch):
    calls, errors = starts
    errors.append(RuntimeError("Version mismatch"))
    with pytest.raises(RuntimeError, match="Version mismatch"):
        init_ray()
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.1:10001")
    errors.append(RuntimeError("Timed out connecting"))
    with pytest.raises(RuntimeError, match="Timed out"):
        init_ray()
    assert len(calls) == 2 and calls[1]["address"] == "ray://10.0.0.1:10001"


def test_an_explicit_local_start_is_retried_with_its_options(starts):
    """The test suite's and the benchmarks' own Ray (address "local", num_cpus) gets the same
    second try: CI's first start on a freshly installed machine timed out once."""
    calls, errors = starts
    errors.append(RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y"))
    start_ray("local", num_cpus=2)
    assert [c["address"] for c in calls] == ["local", "local"]
    assert all(c["num_cpus"] == 2 and c["include_dashboard"] is False for c in calls)
