"""GDPR erasure: deny-list → shred keys → delete and verify → compact → purge sources → receipt.

Every step is idempotent and, once done, appended to the ledger; a crash at any point
leaves a prefix of steps, and running the erasure again (same subject) resumes after the
last recorded one. The subject is erased from every pixlake collection of the database.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from pixlake.platform import records as R
from pixlake.platform.errors import GovernanceError
from pixlake.platform.governance.cipher import associated_data, seal, unseal
from pixlake.platform.governance.ledger import DONE
from pixlake.platform.governance.service import Governance
from pixlake.platform.store import MilvusStore, build_filter, literal

log = logging.getLogger(__name__)
STEPS = ("deny", "shred", "delete", "verify", "compact", "purge_sources", "receipt")
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

    def run(self, erasure_id: str, fault: Optional[Callable[[str], None]] = None) -> dict:
        """Run (or resume) an erasure to the end and return its receipt.

        Raises:
            GovernanceError: rows remain after the delete (re-run to resume).
        """
        ledger = self.governance.ledger
        state = ledger.get(erasure_id)
        tenant, pseudonym = state["tenant"], state["subject"]
        done = {s["name"] for s in state["steps"] if s["status"] != "failed"}
        fault = fault or _fault_from_env
        for name in STEPS:
            if name in done:
                continue
            count, status = getattr(self, f"_{name}")(erasure_id, tenant, pseudonym, state["purge_sources"])
            ledger.record(erasure_id, name, count, status)
            self.governance.audit.record(f"erasure.{name}", erasure_id=erasure_id, tenant=tenant, pseudonym=pseudonym,
                                         count=count, status=status)
            fault(name)
        return self.receipt(erasure_id)

    def receipt(self, erasure_id: str) -> dict:
        """The receipt: ``erasure_id``, ``subject`` (pseudonym), ``requested_at``, ``completed_at``,
        ``steps`` (``{"name", "status", "count", "at"}``), ``verified`` (no personal data)."""
        state = self.governance.ledger.get(erasure_id)
        steps = [s for s in state["steps"] if s["name"] != "receipt"]
        final = next((s for s in state["steps"] if s["name"] == "receipt"), None)
        verify = next((s for s in steps if s["name"] == "verify"), None)
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
        }

    # --- steps (each returns (count, status) and is safe to repeat) -----------------------------

    def _each_store(self, fn) -> int:
        return sum(fn(store) for store in self.store.each_collection())

    def _deny(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        # Before the keys go: the sources to purge can only be read while they can be unsealed.
        if purge:
            self._plan_purge(erasure_id, tenant, pseudonym)
        return int(self.governance.ledger.deny(tenant, pseudonym, erasure_id)), DONE

    def _shred(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        return self.governance.keys.shred(tenant, pseudonym), DONE

    def _delete(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        expr = build_filter(tenant, subject=pseudonym)
        return self._each_store(lambda s: s.delete(filter=expr) if s.count(expr) else 0), DONE

    def _verify(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        expr = build_filter(tenant, subject=pseudonym)
        # A row written by a job between the delete and now is deleted here too (Strong consistency).
        remaining = self._each_store(lambda s: s.count(expr) and (s.delete(filter=expr), s.count(expr))[1])
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
        paths = json.loads(unseal(plan.read_text(), key, associated_data(erasure_id, tenant)))
        purged = 0
        for path in paths:
            try:
                os.unlink(path)
                purged += 1
            except FileNotFoundError:
                pass  # deleted before a crash: idempotent
        plan.unlink()
        return purged, DONE

    def _receipt(self, erasure_id: str, tenant: str, pseudonym: str, purge: bool) -> tuple[int, str]:
        return 0, DONE

    # --- purge planning ---------------------------------------------------------------------------

    def _plan_path(self, erasure_id: str) -> Path:
        return self.governance.dir / "erasures" / f"{erasure_id}.purge"

    def _plan_purge(self, erasure_id: str, tenant: str, pseudonym: str) -> None:
        """Unseal the subject's sources while its keys exist and keep the owned ones in a
        plan sealed under the tenant's identity key (the ledger never holds paths)."""
        rows: list[dict] = []

        def collect(store: MilvusStore) -> int:
            found = store.query(build_filter(tenant, subject=pseudonym), [R.ID, R.SOURCE, R.KEY_ID, R.CONTENT_HASH])
            rows.extend(found)
            return len(found)

        self._each_store(collect)
        hashes = sorted({r[R.CONTENT_HASH] for r in rows})
        shared: set[str] = set()  # identical bytes held by another subject: that file stays
        if hashes:
            others = build_filter(tenant) + f" and {R.SUBJECT} != {literal(pseudonym)} and {R.CONTENT_HASH} in [" \
                + ", ".join(literal(h) for h in hashes) + "]"
            self._each_store(lambda s: len([shared.add(r[R.CONTENT_HASH]) for r in s.query(others, [R.CONTENT_HASH])]))
        keys = self.governance.keys.keys_by_id(tenant, sorted({r[R.KEY_ID] for r in rows if r[R.KEY_ID]}))
        paths = set()
        for r in rows:
            if r[R.CONTENT_HASH] in shared:
                continue
            source = r[R.SOURCE]
            if r[R.KEY_ID]:
                if r[R.KEY_ID] not in keys:
                    continue
                source = unseal(source, keys[r[R.KEY_ID]], associated_data(r[R.ID], tenant, r[R.KEY_ID]))
            path = Path(source).expanduser().resolve() if "://" not in source else None
            if path is not None and any(path.is_relative_to(root) for root in self.owned):
                paths.add(str(path))
        plan = self._plan_path(erasure_id)
        plan.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = plan.with_suffix(".tmp")
        tmp.write_text(seal(json.dumps(sorted(paths)), self.governance.identity_key(tenant), associated_data(erasure_id, tenant)))
        os.replace(tmp, plan)


def _fault_from_env(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        log.error("fault injection: exiting after step %s", step)
        os._exit(137)
