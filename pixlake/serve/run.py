"""Start the Serve app on a local (or joined) Ray: used by ``pixlake serve`` and the tests."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from typing import Callable, Iterator

from pixlake.serve.config import ServeSettings

log = logging.getLogger(__name__)
APP_NAME = "pixlake"
# What Kubernetes and systemd send (SIGTERM) and Ctrl-C (SIGINT).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """A stop signal arrived; raised in the main thread by :func:`stop_on_signals`.

    Args:
        signum: the signal's number.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def check_model_matches(settings: ServeSettings) -> str:
    """Refuse to serve a collection with a query encoder of another fingerprint.

    Returns:
        The encoder fingerprint.

    Raises:
        StoreError: the collection is missing or was embedded by another encoder.
        ModelError: the encoder cannot be loaded.
    """
    from pixlake.platform.collection import crossover_hint, open_collection
    from pixlake.platform.encoder import load_encoder

    fingerprint = load_encoder(settings.model, settings.pretrained, device="cpu").fingerprint
    platform = settings.platform_settings()
    # milvus-lite: closed at once, as the Searcher replica must be the only process holding it
    with open_collection(platform, fingerprint) as opened:
        hint = crossover_hint(platform, opened.store.count())
    if hint:
        print(hint, file=sys.stderr)
    return fingerprint


def start(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
          ray_started: Callable[[], None] = lambda: None) -> str:
    """Check the model, then deploy the app over HTTP on ``host:port``.

    Args:
        ray_started: called once Ray is up, before Serve starts.

    Returns:
        The base URL.
    """
    from ray import serve

    from pixlake.platform.ray_runtime import init_ray
    from pixlake.serve.app import build_app
    from pixlake.serve.guard import PROXY_CALLBACK, PROXY_CALLBACK_ENV, PROXY_CAP_ENV

    check_model_matches(settings)
    # The body cap also in Serve's HTTP proxy, which otherwise reads a body ahead of the app
    # unbounded. Proxies read these when Ray starts them: a Ray started here gets them; a
    # cluster joined must have been started with them (docs/security.md).
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    os.environ.setdefault(PROXY_CAP_ENV, str(settings.max_body_bytes))
    init_ray()
    ray_started()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings.model_dump(mode="json")), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    log.info("pixlake serving %s at %s", settings.collection, url)
    return url


def stop() -> None:
    """Remove the app and shut Serve down (Ray stays connected)."""
    import ray
    from ray import serve

    if ray.is_initialized():  # else serve.shutdown() would start a Ray just to find no Serve
        serve.shutdown()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], None]]:
    """Inside, SIGTERM and SIGINT raise :class:`StopRequested` in the main thread.

    The handlers are set whatever was inherited: a non-interactive shell starts background
    jobs with SIGINT ignored, and Python's own Ctrl-C handler is then never installed. After
    the first signal both are ignored, so a second one cannot cut the shutdown short and
    strand Ray's processes. The previous handlers come back on exit.

    Yields:
        A function that sets the handlers again: starting Ray's core worker (``ray.init``)
        puts Ray's fatal-signal handler on SIGTERM, which aborts the process (exit -6)
        without stopping Serve, so call it once Ray has started.
    """

    def on_signal(signum: int, frame: object) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise StopRequested(signum)

    def arm() -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, on_signal)

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    arm()
    try:
        yield arm
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def serve_until_stopped(settings: ServeSettings, host: str, port: int, on_ready: Callable[[str], None],
                        on_stop: Callable[[str], None]) -> None:
    """Start the app and call ``on_ready(url)``; on SIGTERM or SIGINT call ``on_stop(signal
    name)``, :func:`stop` and leave Ray, which ends a Ray started here (GCS, raylet, workers,
    replicas; a joined cluster stays up). A signal during the start stops it too, and a failed
    start is cleaned up the same way. Must run in the main thread (signal handlers)."""
    import ray

    with stop_on_signals() as rearm:
        try:
            on_ready(start(settings, host, port, ray_started=rearm))  # ray.init replaced SIGTERM's handler
            while True:
                time.sleep(3600)
        except StopRequested as e:
            on_stop(str(e))
        finally:
            try:
                stop()
            finally:
                ray.shutdown()
