"""The store as a Ray actor, so pipeline tasks on any worker can read and write it.

milvus-lite holds an exclusive lock on its data directory, so exactly one process may
open it: the actor is that process, pinned to the driver's node (where the file is).
A Milvus server takes many clients, but one actor per job is still far from the
bottleneck: it moves vectors, the encoders do the work.
"""

from __future__ import annotations

from typing import Any

from pixlake.platform.store import LITE, MilvusStore, backend_of


class _StoreActor:
    def __init__(self, uri: str, collection: str):
        self.store = MilvusStore(uri, collection)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.store, method)(*args, **kwargs)


class StoreProxy:
    """A picklable handle whose methods run on the store actor (``proxy.upsert(rows)``)."""

    def __init__(self, actor: Any):
        self.actor = actor

    def __getattr__(self, method: str):
        import ray

        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: ray.get(self.actor.call.remote(method, *args, **kwargs))

    def shutdown(self) -> None:
        """Close the store and end the actor, releasing milvus-lite's lock."""
        import ray

        try:
            ray.get(self.actor.call.remote("close"))
        finally:
            ray.kill(self.actor)


def start_store_actor(uri: str, collection: str) -> StoreProxy:
    """Start the actor that owns the store for one job (Ray must be initialised).

    Raises:
        StoreError: the store cannot be opened (raised from the actor's constructor).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1}
    if backend_of(uri) == LITE:
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    actor = ray.remote(_StoreActor).options(**options).remote(uri, collection)
    proxy = StoreProxy(actor)
    try:
        proxy.exists()  # surfaces a constructor failure (locked, unwritable) now
    except ray.exceptions.RayActorError as e:
        import re

        from pixlake.platform.errors import StoreError

        cause = e.cause if getattr(e, "cause", None) is not None else e
        last = str(cause).strip().splitlines()[-1]  # the constructor's own error line
        raise StoreError(re.sub(r"^[\w.]+(Error|Exception): ", "", last)) from e
    return proxy
