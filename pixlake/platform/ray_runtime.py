"""Joining or starting Ray: the one place pixlake calls ``ray.init``."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Ray's local start has been seen here to time out right after another Ray on this machine
# shut down, waiting for its GCS port file (RuntimeError "Timed out waiting for file ...") or
# for its raylet to register (Exception "The current node timed out during startup"); a
# second start succeeds.
LOCAL_START_TRIES = 2


def init_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under ``ray job submit``) or one started
    with ``ray start`` on this machine; else start a local one (again once, if it times out)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    tries = 1 if address else LOCAL_START_TRIES
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for the raylet timeout
            if "timed out" not in str(e).lower() or attempt == tries:
                raise
            log.warning("Ray's local start timed out (%s); starting it again", e)
            ray.shutdown()
