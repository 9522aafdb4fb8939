"""Owner actors: the store and the governance of a job, each as one Ray actor, so pipeline
tasks on any worker can reach them.

milvus-lite holds an exclusive lock on its data directory, so exactly one process may
open it: the store actor is that process, pinned to the driver's node (where the file is).
A Milvus server takes many clients, but one actor per job is still far from the
bottleneck: it moves vectors, the encoders do the work. The governance actor owns the
local key store and ledger (files on the driver's node) and hands each stage its
tenant's crypto handle (:class:`~pixlake.platform.governance.tenant_crypto.TenantCrypto`).
"""

from __future__ import annotations

from typing import Any, Callable

from pixlake.platform.store import LITE, MilvusStore, backend_of


class _Owner:
    def __init__(self, factory: Callable[..., Any], *args: Any):
        self.obj = factory(*args)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.obj, method)(*args, **kwargs)


# One class per owned object, so Ray names their processes apart (``ray::StoreOwner.call``)
# in the dashboard, in `ps`, and in bench/job_profile.py's CPU accounting.
class StoreOwner(_Owner):
    pass


class GovernanceOwner(_Owner):
    pass


class StatsOwner(_Owner):
    pass


class ActorProxy:
    """A picklable handle whose methods run on the owner actor (``proxy.upsert(rows)``)."""

    def __init__(self, actor: Any):
        self.actor = actor

    def __getattr__(self, method: str):
        import ray

        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: ray.get(self.actor.call.remote(method, *args, **kwargs))

    def shutdown(self) -> None:
        """Close the owned object and end the actor (releasing milvus-lite's lock)."""
        import ray

        try:
            ray.get(self.actor.call.remote("close"))
        finally:
            ray.kill(self.actor)


StoreProxy = ActorProxy  # the store's handle, as the stages' docstrings name it


def start_owner_actor(owner: type, factory: Callable[..., Any], *args: Any, pin_to_driver: bool, probe: str) -> ActorProxy:
    """Start an actor owning ``factory(*args)`` (Ray must be initialised).

    Args:
        owner: the actor class (:class:`StoreOwner`, :class:`GovernanceOwner`).
        pin_to_driver: run on the driver's node (the owned files are there).
        probe: a cheap method called once, so a constructor failure surfaces now.

    Raises:
        PixlakeError: the constructor's own error (the store cannot be opened, no key source...).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1}
    if pin_to_driver:
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    actor = ray.remote(owner).options(**options).remote(factory, *args)
    proxy = ActorProxy(actor)
    try:
        getattr(proxy, probe)()
    except ray.exceptions.RayActorError as e:
        import re

        from pixlake.platform import errors

        cause = e.cause if getattr(e, "cause", None) is not None else e
        last = str(cause).strip().splitlines()[-1]  # the constructor's own error line
        match = re.match(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.*)$", last)
        kind = getattr(errors, match.group(1), errors.StoreError) if match else errors.StoreError
        if not (isinstance(kind, type) and issubclass(kind, errors.PixlakeError)):
            kind = errors.StoreError
        raise kind(match.group(2) if match else last) from e
    return proxy


def start_store_actor(store: Any) -> ActorProxy:
    """Start the actor that owns the store of :class:`~pixlake.platform.settings.StoreSettings` for one job.

    Raises:
        StoreError: the store cannot be opened (raised from the actor's constructor).
    """
    return start_owner_actor(StoreOwner, MilvusStore.configured, store, pin_to_driver=backend_of(store.db) == LITE, probe="exists")


def start_stats(dim: int, shards: int) -> Any:
    """Start the actors that accumulate the run's metrics: stage latencies and embedding
    statistics (:class:`~pixlake.platform.pipeline.run_metrics.MetricsShards`)."""
    from pixlake.platform.pipeline.run_metrics import MetricsShards, RunMetrics
    from pixlake.platform.pipeline.startup import start_concurrently

    # On the driver's node: an actor elsewhere dies with its node, and the job with it.
    def start() -> ActorProxy:
        return start_owner_actor(StatsOwner, RunMetrics, dim, pin_to_driver=True, probe="get")

    return MetricsShards(list(start_concurrently({str(i): start for i in range(shards)}).values()))


def start_governance_actor(settings: Any) -> ActorProxy:
    """Start the actor that owns the job's governance (keys, deny-list, audit).

    Raises:
        ConfigError, GovernanceError: no key source, or a key store that does not open.
    """
    from pixlake.platform.governance.service import Governance

    return start_owner_actor(GovernanceOwner, Governance.open, settings, pin_to_driver=True, probe="settings_json")
