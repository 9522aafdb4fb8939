"""Claims give each id of a job one writer: the first claimant owns it, a re-executed task
(same task id, same positions) still owns its rows, and every other row with that id is a
duplicate. Plain functions here; the job on a server exercises the shard actors."""

from __future__ import annotations

import pyarrow as pa

from pixlake.platform.records import row_id
from pixlake.platform.pipeline.claims import ClaimShard, shard_of, token_of
from pixlake.platform.pipeline.rows import OK, SKIPPED, table
from pixlake.platform.pipeline.skip import DUPLICATE, SkipExisting


class InProcessClaims:
    """The :class:`~pixlake.platform.pipeline.claims.Claims` call over shards in this process."""

    def __init__(self, shards: int = 3):
        self.shards = [ClaimShard() for _ in range(shards)]

    def claim(self, ids, tokens):
        owned = set()
        for i, t in zip(ids, tokens):
            if self.shards[shard_of(i, len(self.shards))].claim([i], [t])[0]:
                owned.add(i)
        return owned


def _id(n: int) -> str:
    return f"{n:032x}"


def test_the_first_token_owns_an_id_and_only_that_token_owns_it_again():
    shard = ClaimShard()
    a, b = token_of("task-a", 1, 0), token_of("task-b", 1, 0)
    assert shard.claim([_id(1), _id(2)], [a, a]) == [True, True]
    assert shard.claim([_id(1), _id(3)], [b, b]) == [False, True]  # id 1 is task a's
    assert shard.claim([_id(1)], [a]) == [True]  # task a re-executed: still its row
    assert shard.size() == 3


def test_tokens_name_a_position_and_are_the_same_in_every_process():
    tokens = {token_of(t, b, r) for t in ("t1", "t2") for b in (1, 2) for r in (0, 1)}
    assert len(tokens) == 8
    assert token_of("t1", 1, 0) == token_of("t1", 1, 0) < 2**64


def test_ids_spread_over_every_shard_and_always_land_on_the_same_one():
    ids = [row_id("acme", "s", f"{n}") for n in range(600)]  # as the load stage makes them
    counts = [0, 0, 0]
    for i in ids:
        counts[shard_of(i, 3)] += 1
        assert shard_of(i, 3) == shard_of(i, 3)
    assert min(counts) > 150, counts
    assert 0 <= shard_of("not-hex", 3) < 3


class _NoStore:
    def existing_ids(self, ids, model, consistency="Strong"):
        return set()


class _NoDenials:
    def denied(self, tenant, subjects):
        return set()


def _batch(ids):
    return table([{"id": i, "tenant": "acme", "subject": "s", "source": f"f{n}", "status": OK, "reason": "",
                   "image": b"x"} for n, i in enumerate(ids)], [("image", pa.binary())])


def test_skip_keeps_the_first_claimant_of_an_image_seen_in_another_block():
    claims = InProcessClaims()
    first = SkipExisting(_NoStore(), "m", _NoDenials(), claims)(_batch([_id(1), _id(2)])).to_pylist()
    # another task's batch (outside Ray every task id is "": id 2 sits at another position)
    second = SkipExisting(_NoStore(), "m", _NoDenials(), claims)(_batch([_id(2), _id(3)])).to_pylist()
    assert [r["status"] for r in first] == [OK, OK]
    assert [(r["status"], r["reason"]) for r in second] == [(SKIPPED, DUPLICATE), (OK, "")]
    assert second[0]["image"] == b""
