"""Claims: which row of a job writes an id, decided without one actor on the per-row path.

On a Milvus server the job's tasks write directly and concurrently (:mod:`.job_store`), so
"is this id stored yet?" followed by a write is no longer atomic: two identical images in
different blocks could both be written and both counted. Before the expensive stages, each
row claims its id on one of a few shard actors (by the id's hash); the first claimant owns it
and every other row with that id is skipped as a duplicate. One claim per row, a dict
update in a shard: the work spreads over the shards as the job grows.

A claim carries a token naming the row's position: the Ray task (whose id a retry and a
lineage re-execution keep), the batch within it and the row within the batch. A re-executed
task claims again with the same tokens and still owns its rows, so a worker lost mid-job
costs no rows.

Memory: about 110 bytes per distinct id of the job (a 128-bit int key and a 64-bit token),
spread over the shards, all on the driver's node: about 11 GB for 100M images.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

# Shards per cluster CPU: one more per 16 CPUs, at least 2, so no single actor holds the path.
CPUS_PER_SHARD = 16
MIN_SHARDS = 2


def token_of(task_id: str, batch: int, row: int) -> int:
    """The 64-bit claim token of a row's position (stable across a task's re-execution)."""
    return int.from_bytes(hashlib.blake2b(f"{task_id}:{batch}:{row}".encode(), digest_size=8).digest(), "big")


def _key(row_id: str) -> Any:
    try:
        return int(row_id, 16)  # row ids are 32 hex digits: a 128-bit int takes half a str's memory
    except ValueError:
        return row_id


class ClaimShard:
    """One shard's claims: id → the token of its first claimant."""

    def __init__(self) -> None:
        self.owner: dict[Any, int] = {}

    def claim(self, ids: Sequence[str], tokens: Sequence[int]) -> list[bool]:
        """Claim each id for its token; True where that token owns the id (first, or again)."""
        setdefault = self.owner.setdefault
        return [setdefault(_key(i), t) == t for i, t in zip(ids, tokens)]

    def size(self) -> int:
        """Ids claimed on this shard."""
        return len(self.owner)


def shard_of(row_id: str, shards: int) -> int:
    """The shard that decides ``row_id`` (the same in every process)."""
    try:
        return int(row_id[:8], 16) % shards
    except ValueError:
        return int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=4).digest(), "big") % shards


class Claims:
    """A picklable handle on the job's claim shards (Ray actors of :class:`ClaimShard`)."""

    def __init__(self, actors: list):
        self.actors = actors

    def claim(self, ids: Sequence[str], tokens: Sequence[int]) -> set[str]:
        """The ``ids`` whose claim with ``tokens`` (one per id, same order) owns them."""
        import ray

        groups: dict[int, tuple[list[str], list[int]]] = {}
        for i, t in zip(ids, tokens):
            g = groups.setdefault(shard_of(i, len(self.actors)), ([], []))
            g[0].append(i)
            g[1].append(t)
        refs = {s: self.actors[s].claim.remote(*g) for s, g in groups.items()}  # all shards at once
        owned: set[str] = set()
        for s, ref in refs.items():
            owned.update(i for i, mine in zip(groups[s][0], ray.get(ref)) if mine)
        return owned

    def shutdown(self) -> None:
        """End the shard actors."""
        import ray

        for a in self.actors:
            ray.kill(a)


def shard_count(cluster_cpus: int) -> int:
    """How many claim shards a job on ``cluster_cpus`` CPUs starts."""
    return max(MIN_SHARDS, cluster_cpus // CPUS_PER_SHARD)


def start_claims(shards: int) -> Claims:
    """Start the job's ``shards`` claim shards (Ray must be initialised; :func:`shard_count`
    gives more on larger clusters).

    They run on the driver's node: a shard on a worker node would die with it and take its
    claims along, while the driver's node going down ends the job anyway."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    shard = ray.remote(ClaimShard).options(num_cpus=0, max_concurrency=1, scheduling_strategy=here)
    return Claims([shard.remote() for _ in range(shards)])
