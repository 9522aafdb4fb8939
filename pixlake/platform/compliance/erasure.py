"""GDPR erasure: count near-copies → deny-list → shred keys → delete and verify → compact →
purge sources → receipt.

Every step is idempotent and, once done, appended to the ledger; a crash at any point
leaves a prefix of steps, and running the erasure again (same subject) resumes after the
last recorded one. The subject is erased from every pixlake collection of the database,
and from the drift statistics: before its rows leave a collection, the per-dimension
embedding moments of every run of that collection are dropped (:mod:`pixlake.platform.drift`).

One erasure runs at a time: :meth:`Eraser.run` holds a lock file per erasure id, so a
second request for the same subject (same id, from the ledger) in this process or another
on the host waits for the first, or leaves it alone, instead of running every step twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

from pixlake.platform import records as R
from pixlake.platform.drift import StatsHistory
from pixlake.platform.errors import GovernanceError
from pixlake.platform.governance.cipher import associated_data, seal, unseal
from pixlake.platform.governance.ledger import DONE
from pixlake.platform.governance.private import write_private
from pixlake.platform.governance.service import Governance
from pixlake.platform.store.filters import build_filter

if TYPE_CHECKING:
    from pixlake.platform.store import MilvusStore

log = logging.getLogger(__name__)
STEPS = ("near_copies", "deny", "shred", "delete", "verify", "compact", "purge_sources", "receipt")
# Stored rows looked at per image of the subject when counting its near-copies.
NEAR_CANDIDATES = 100
FAULT_ENV = "PIXLAKE_FAULT_ERASE_AFTER"  # tests: exit the process right after this step is recorded
_PAGE = 1000


class Eraser:
    """Runs erasures over one database.

    Args:
        store: any collection of the database (the erasure reaches all of them).
        governance: keys, ledger and audit of that database.
        owned_sources: folders whose images pixlake owns; only there does a purge delete files.
    """

    def __init__(self, store: MilvusStore, governance: Governance, owned_sources: Sequence[Path] = ()):
        self.store = store
        self.governance = governance
        self.owned = [Path(p).expanduser().resolve() for p in owned_sources]

    # --- entry points ---------------------------------------------------------------------

    def start(self, tenant: str, subject: str, purge_sources: bool = False) -> tuple[str, bool]:
        """Open (or find the unfinished) erasure of a raw subject id; returns ``(erasure_id, resumed)``."""
        pseudonym = self.governance.pseudonym(tenant, subject)
        return self.governance.ledger.open_erasure(tenant, pseudonym, purge_sources)

    def run(self, erasure_id: str, fault: Optional[Callable[[str], None]] = None, wait: bool = True) -> dict:
        """Run (or resume) an erasure to the end and return its receipt.

        Args:
            wait: when the erasure is running already (another thread or process): True
                waits for it, then finishes whatever it left; False returns the receipt as it
                stands (``in_progress``) at once.

        Raises:
            GovernanceError: rows remain after the delete (re-run to resume).
        """
        with self._exclusive(erasure_id, wait) as mine:
            if not mine:
                return self.receipt(erasure_id)
            ledger = self.governance.ledger
            state = ledger.get(erasure_id)  # read under the lock: a run that just ended is seen whole
            tenant, pseudonym = state["tenant"], state["subject"]
            done = {s["name"] for s in state["steps"] if s["status"] != "failed"}
            fault = fault or _fault_from_env
            for name in STEPS:
                if name in done:
                    continue
                count, status = getattr(self, f"_{name}")(erasure_id, tenant, pseudonym, state["purge_sources"])
                ledger.record(erasure_id, name, count, status)
                self.governance.audit.record(f"erasure.{name}", erasure_id=erasure_id, tenant=tenant,
                                             pseudonym=pseudonym, count=count, status=status)
                fault(name)
        return self.receipt(erasure_id)

    @contextmanager
    def _exclusive(self, erasure_id: str, wait: bool) -> Iterator[bool]:
        """Hold the erasure's lock file (yields True), or yield False when ``wait`` is False
        and another thread or process holds it. ``flock`` locks belong to an open file, so
        two threads of one process exclude each other too; a crashed holder releases it."""
        path = self.governance.dir / "erasures" / f"{erasure_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def receipt(self, erasure_id: str) -> dict:
        """The receipt: ``erasure_id``, ``subject`` (pseudonym), ``requested_at``, ``completed_at``,
        ``steps`` (``{"name", "status", "count", "at"}``), ``verified``, and ``near_copies``
        (rows of other subjects near the subject's images, a count; None when not counted).
        No personal data."""
        state = self.governance.ledger.get(erasure_id)
        steps = [s for s in state["steps"] if s["name"] != "receipt"]
        final = next((s for s in state["steps"] if s["name"] == "receipt"), None)
        verify = next((s for s in steps if s["name"] == "verify"), None)
        near = next((s for s in steps if s["name"] == "near_copies" and s["status"] == DONE), None)
        failed = bool(steps) and steps[-1]["status"] == "failed"
        return {
            "erasure_id": erasure_id,
            "subject": state["subject"],
            "tenant": state["tenant"],
            "requested_at": state["requested_at"],
            "completed_at": final["at"] if final else None,
            "status": "completed" if final else "failed" if failed else "in_progress",
            "steps": steps,
            "verified": bool(verify and verify["status"] == DONE and verify["count"] == 0),
            "near_copies": near["count"] if near else None,
        }

    # --- steps (each returns (count, status) and is safe to repeat) -----------------------------

    def _each_store(self, fn) -> int:
        return sum(fn(store) for store in self.store.each_collection())

    def _near_copies(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        """How many rows of other subjects of the tenant are near-duplicates of the subject's
        (cosine at least :data:`~pixlake.platform.dedup.DEFAULT_THRESHOLD`), in the collection
        the erasure was asked through: a count for a compliance officer to review, never
        their ids, and nothing of theirs is deleted. Counted first, while the subject's
        vectors can still be decrypted; a resumed erasure already past the deny cannot."""
        import numpy as np

        from pixlake.platform.collection import QueryCollection
        from pixlake.platform.dedup import DEFAULT_THRESHOLD, SCORE_SLACK

        if self.governance.denied(tenant, [pseudonym]) or not self.store.exists():
            return 0, "skipped"
        collection = QueryCollection(self.store, self.governance)  # not closed: both are the caller's
        near: set[str] = set()
        for page in collection.read_pages(tenant, subject=pseudonym):
            if not page:
                continue
            vectors = np.asarray([r[R.VECTOR] for r in page], np.float32)
            for hits in collection.candidates(vectors, NEAR_CANDIDATES, tenant):
                near.update(h[R.ID] for h in hits
                            if h[R.SUBJECT] != pseudonym and h["score"] >= DEFAULT_THRESHOLD - SCORE_SLACK)
        return len(near), DONE

    def _deny(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        # Before the keys go: the sources to purge can only be read while they can be unsealed.
        if purge:
            self._plan_purge(erasure_id, tenant, pseudonym)
        return int(self.governance.ledger.deny(tenant, pseudonym, erasure_id)), DONE

    def _shred(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        return self.governance.keys.shred(tenant, pseudonym), DONE

    def _delete_rows(self, store: MilvusStore, erasure_id: str, tenant: str, pseudonym: str) -> int:
        """Delete the subject's rows of one collection; returns how many there were. The
        collection's drift moments go first: once the rows are gone, a resumed erasure
        could no longer tell which collections held the subject."""
        expr = build_filter(tenant, subject=pseudonym)
        found = store.count(expr)
        if found:
            dropped = StatsHistory(self.governance.dir).drop_moments(store.collection, f"dropped by erasure {erasure_id}")
            if dropped:
                self.governance.audit.record("erasure.drift_moments_dropped", erasure_id=erasure_id, tenant=tenant,
                                             pseudonym=pseudonym, collection=store.collection, count=dropped)
            store.delete(filter=expr)
        return found

    def _delete(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        return self._each_store(lambda s: self._delete_rows(s, erasure_id, tenant, pseudonym)), DONE

    def _verify(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        expr = build_filter(tenant, subject=pseudonym)
        # A row written by a job between the delete and now is deleted here too (Strong consistency).
        remaining = self._each_store(lambda s: self._delete_rows(s, erasure_id, tenant, pseudonym) and s.count(expr))
        if remaining:
            raise GovernanceError(f"erasure {erasure_id}: {remaining} rows remain after the delete; run it again to resume")
        return 0, DONE

    def _compact(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        results = self.store.compact(self.store.collections()).values()  # all at once: one wait
        return sum(r == "done" for r in results), DONE

    def _purge_sources(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        if not purge:
            return 0, "skipped"
        plan = self._plan_path(erasure_id)
        if not plan.exists():
            return 0, DONE  # purged already (the plan goes last)
        key = self.governance.identity_key(tenant)
        planned = [p if isinstance(p, dict) else {"path": p, "hash": None}  # a plan written before hashes were kept
                   for p in json.loads(unseal(plan.read_text(), key, associated_data(erasure_id, tenant)))]
        # Decided now, not when planned: the subject's rows are gone, so every row found is
        # someone else's, including rows written since the plan.
        kept = self._still_used(tenant, planned)
        purged = 0
        for entry in planned:
            if entry["path"] in kept:
                continue
            try:
                os.unlink(entry["path"])
                purged += 1
            except FileNotFoundError:
                pass  # deleted before a crash: idempotent
        plan.unlink()
        return purged, DONE

    def _still_used(self, tenant: str, planned: list[dict]) -> set[str]:
        """The planned paths some row still needs: a row of any tenant and subject, in any
        collection, whose source opens to that path, or a row of this tenant holding the
        same bytes (same keyed content hash). Sources are sealed per row, so this reads
        and opens the source of every row of the database: a purge costs a full scan."""
        paths = {e["path"] for e in planned}
        by_hash: dict[str, set[str]] = {}
        for e in planned:
            if e["hash"]:
                by_hash.setdefault(e["hash"], set()).add(e["path"])
        kept: set[str] = set()

        def scan(store: MilvusStore) -> int:
            for page in store.pages("", (R.ID, R.TENANT, R.SOURCE, R.KEY_ID, R.CONTENT_HASH), _PAGE):
                for t in {r[R.TENANT] for r in page}:
                    rows = [r for r in page if r[R.TENANT] == t]
                    if t == tenant:
                        kept.update(*(by_hash.get(r[R.CONTENT_HASH], ()) for r in rows))
                    kept.update(p for _, p in self._sources(t, rows) if p in paths)
            return 0

        self._each_store(scan)
        return kept

    def _sources(self, tenant: str, rows: list[dict]) -> list[tuple[dict, str]]:
        """``(row, resolved local path)`` of rows of one tenant, sources opened where sealed.
        Rows whose key is gone belong to an erased subject: they point nowhere any more."""
        keys = self.governance.keys.keys_by_id(tenant, sorted({r[R.KEY_ID] for r in rows if r[R.KEY_ID]}))
        out = []
        for r in rows:
            source = r[R.SOURCE]
            if r[R.KEY_ID]:
                if r[R.KEY_ID] not in keys:
                    continue
                try:
                    source = unseal(source, keys[r[R.KEY_ID]], associated_data(r[R.ID], tenant, r[R.KEY_ID]))
                except GovernanceError:
                    log.warning("row %s: its source cannot be opened; it counts as pointing nowhere", r[R.ID])
                    continue
            if "://" not in source:
                out.append((r, str(Path(source).expanduser().resolve())))
        return out

    def _receipt(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        return 0, DONE

    # --- purge planning ---------------------------------------------------------------------------

    def _plan_path(self, erasure_id: str) -> Path:
        return self.governance.dir / "erasures" / f"{erasure_id}.purge"

    def _plan_purge(self, erasure_id: str, tenant: str, pseudonym: str) -> None:
        """Open the subject's sources while its keys exist and keep the owned ones, with
        their keyed content hashes, in a plan sealed under the tenant's identity key (the
        ledger never holds paths). Whether another row still needs a file is decided when
        the purge runs (:meth:`_still_used`)."""
        rows: list[dict] = []

        def collect(store: MilvusStore) -> int:
            found = store.query(build_filter(tenant, subject=pseudonym), [R.ID, R.SOURCE, R.KEY_ID, R.CONTENT_HASH])
            rows.extend(found)
            return len(found)

        self._each_store(collect)
        planned: dict[str, str] = {}
        for r, path in self._sources(tenant, rows):
            if any(Path(path).is_relative_to(root) for root in self.owned):
                planned[path] = r[R.CONTENT_HASH]
        plan = self._plan_path(erasure_id)
        plan.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        entries = [{"path": p, "hash": h} for p, h in sorted(planned.items())]
        write_private(plan, seal(json.dumps(entries), self.governance.identity_key(tenant),
                                 associated_data(erasure_id, tenant)))


def _fault_from_env(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        log.error("fault injection: exiting after step %s", step)
        os._exit(137)
