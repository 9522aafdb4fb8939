"""Retry policy: which Milvus errors mean "server away for now", how long and how often
a store call retries them, and the error every other failure becomes.

Only a Milvus server is retried (it can be down or restarting while a job runs);
milvus-lite runs in-process, where a failure is never transient.
"""

from __future__ import annotations

import functools
import logging
import re
import time

from pixlake.platform.errors import PixlakeError, StoreError
from pixlake.platform.settings import SERVER

log = logging.getLogger(__name__)

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 5.0  # doubling between the two
# A Milvus server that is down or restarting: the client cannot connect (code 2), or the
# server is back but has not reloaded the collection yet (code 101), or gRPC gave up. A
# restarted standalone server also answers for a while with its coordinators still naming
# the data node of before the restart ("node not match", "node not found", "session not
# found") or a closing internal connection: that too is "away for now".
_TRANSIENT_CODES = {2, 101}
_TRANSIENT_TEXT = re.compile(
    r"unavailable|not ready|not loaded|fail connecting|deadline exceeded|connection refused"
    r"|node not match|node not found|session not found|connection is closing", re.I)


def transient(error: BaseException) -> bool:
    """Whether a Milvus client error means "server away for now" (retry) rather than "wrong call"."""
    code = getattr(error, "code", None)
    code = getattr(code, "value", code)  # a gRPC StatusCode carries (number, name)
    if isinstance(code, tuple):
        code = code[1]
    return code in _TRANSIENT_CODES or code in ("unavailable", "deadline exceeded") or bool(
        _TRANSIENT_TEXT.search(str(error)))


def _first_line(error: BaseException, width: int) -> str:
    return str(error).splitlines()[0][:width] if str(error) else ""


def store_call(method):
    """Decorate a store method: surface Milvus client failures as :class:`StoreError`
    naming the operation, after retrying a Milvus server that is down or restarting with
    exponential backoff for up to the store's ``retry_deadline_s`` (every wrapped call is
    idempotent, so a retry after a lost reply writes nothing twice). Counts each retry in
    the store's ``retries``; a :class:`PixlakeError` passes through untouched."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        deadline, backoff, retried = None, BACKOFF_FIRST_S, False
        while True:
            try:
                result = method(self, *args, **kwargs)
                if retried:
                    log.warning("%s on %s: Milvus at %s answers again", method.__name__, self.collection, self.uri)
                return result
            except PixlakeError:
                raise
            except Exception as e:
                if self.backend != SERVER or not transient(e):
                    raise StoreError(f"{method.__name__} on {self.collection} in {self.uri} failed: {e}") from e
                now = time.monotonic()
                deadline = deadline or now + self.retry_deadline_s
                if now >= deadline:
                    raise StoreError(
                        f"Milvus server at {self.uri} unreachable for {self.retry_deadline_s:g} s "
                        f"({method.__name__} on {self.collection}): {_first_line(e, 200)}. "
                        "Rows written before are kept: run the job again once the server is back "
                        "and it writes only the rest"
                    ) from e
                if not retried:
                    log.warning("%s on %s: Milvus at %s unavailable (%s); retrying for up to %g s",
                                method.__name__, self.collection, self.uri, _first_line(e, 120),
                                self.retry_deadline_s)
                retried = True
                self.retries += 1
                time.sleep(min(backoff, max(0.0, deadline - now)))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    return wrapper
