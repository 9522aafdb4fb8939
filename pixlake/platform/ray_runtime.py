"""Joining or starting Ray: the one place pixlake calls ``ray.init``."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Ray's local start has been seen here to time out right after another Ray on this machine
# shut down, and on a freshly installed machine's first start (cold disk), waiting for its GCS
# port file (RuntimeError "Timed out waiting for file ...", 30 s) or for its raylet to register
# (Exception "The current node timed out during startup"); a second start succeeds.
LOCAL_START_TRIES = 2


def init_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under ``ray job submit``) or one started
    with ``ray start`` on this machine; else start a local one (again once, if it times out)."""
    import ray

    if ray.is_initialized():
        return
    start_ray(os.environ.get("RAY_ADDRESS"))


def start_ray(address: str | None = None, **init_kwargs) -> None:
    """``ray.init(address, ...)`` without the dashboard or driver logs; a local start
    (``address`` None or ``"local"``) that times out is tried once more."""
    import ray

    local = address in (None, "local")
    tries = LOCAL_START_TRIES if local else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for the raylet timeout
            if "timed out" not in str(e).lower() or attempt == tries:
                raise
            log.warning("Ray's local start timed out (%s); starting it again", e)
            ray.shutdown()
