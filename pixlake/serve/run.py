"""Start the Serve app on a local (or joined) Ray: used by ``pixlake serve`` and the tests."""

from __future__ import annotations

import logging

from pixlake.serve.config import ServeSettings

log = logging.getLogger(__name__)
APP_NAME = "pixlake"


def check_model_matches(settings: ServeSettings) -> str:
    """Refuse to serve a collection with a query encoder of another fingerprint.

    Returns:
        The encoder fingerprint.

    Raises:
        StoreError: the collection is missing or was embedded by another encoder.
        ModelError: the encoder cannot be loaded.
    """
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.query import open_collection

    fingerprint = load_encoder(settings.model, settings.pretrained, device="cpu").fingerprint
    # milvus-lite: closed at once, as the Searcher replica must be the only process holding it
    open_collection(settings.platform_settings(), fingerprint).close()
    return fingerprint


def start(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Check the model, then deploy the app over HTTP on ``host:port``.

    Returns:
        The base URL.
    """
    from ray import serve

    from pixlake.platform.ray_runtime import init_ray
    from pixlake.serve.app import build_app

    check_model_matches(settings)
    init_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings.model_dump(mode="json")), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    log.info("pixlake serving %s at %s", settings.collection, url)
    return url


def stop() -> None:
    """Remove the app and shut Serve down."""
    from ray import serve

    serve.shutdown()
