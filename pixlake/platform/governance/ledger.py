"""The erasure ledger and the deny-list, in one SQLite file beside the key store.

The ledger is append-only: every erasure step that completes adds one line, nothing is
updated or deleted, so a crash leaves a prefix of the steps and a resume continues from
the first step not recorded. It holds pseudonyms, counts and timestamps only, never raw
subject ids or source paths.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

from pixlake.platform.errors import GovernanceError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS erasures (
    erasure_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, subject TEXT NOT NULL,
    purge_sources INTEGER NOT NULL, requested_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS steps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, erasure_id TEXT NOT NULL, name TEXT NOT NULL,
    status TEXT NOT NULL, count INTEGER NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS denied (
    tenant TEXT NOT NULL, subject TEXT NOT NULL, erasure_id TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (tenant, subject));
CREATE TRIGGER IF NOT EXISTS steps_append_only_u BEFORE UPDATE ON steps BEGIN SELECT RAISE(ABORT, 'append-only'); END;
CREATE TRIGGER IF NOT EXISTS steps_append_only_d BEFORE DELETE ON steps BEGIN SELECT RAISE(ABORT, 'append-only'); END;
"""
DONE = "done"
LEDGER_FILE = "ledger.sqlite"  # in the governance directory


def now() -> str:
    """UTC timestamp, ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Ledger:
    """Erasure ledger and deny-list (safe for several processes on one file).

    Args:
        path: the SQLite file (created 0600).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.executescript(_SCHEMA)  # commits by itself; IF NOT EXISTS makes it safe to race
        finally:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # --- deny-list ---------------------------------------------------------------------

    def deny(self, tenant: str, subject: str, erasure_id: str) -> bool:
        """Put a pseudonym on the deny-list; returns False when it already was (idempotent)."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO denied VALUES (?, ?, ?, ?)", (tenant, subject, erasure_id, now()))
            return cur.rowcount == 1

    def denied_since(self, cursor: int) -> tuple[int, set[str]]:
        """Tenants given a deny-list entry after ``cursor`` (0: ever), and the cursor to pass
        next time. Replicas poll it to drop what they cache of a subject erased elsewhere."""
        with self._tx() as db:  # entries are never removed, so rowids only grow
            rows = db.execute("SELECT rowid, tenant FROM denied WHERE rowid > ?", (cursor,)).fetchall()
        return max([cursor, *(r[0] for r in rows)]), {r[1] for r in rows}

    def denied(self, tenant: str, subjects: Sequence[str]) -> set[str]:
        """The pseudonyms of ``subjects`` that are on the tenant's deny-list."""
        subjects = list(set(subjects))
        found: set[str] = set()
        with self._tx() as db:
            for i in range(0, len(subjects), 500):  # SQLite's bound-parameter limit
                chunk = subjects[i:i + 500]
                rows = db.execute(
                    f"SELECT subject FROM denied WHERE tenant = ? AND subject IN ({','.join('?' * len(chunk))})",
                    (tenant, *chunk),
                )
                found.update(r[0] for r in rows)
        return found

    # --- erasures ------------------------------------------------------------------------

    def open_erasure(self, tenant: str, subject: str, purge_sources: bool) -> tuple[str, bool]:
        """Start an erasure, or find the unfinished one of the same subject to resume.

        Returns:
            ``(erasure_id, resumed)``.
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT e.erasure_id FROM erasures e WHERE tenant = ? AND subject = ? AND NOT EXISTS "
                "(SELECT 1 FROM steps s WHERE s.erasure_id = e.erasure_id AND s.name = 'receipt') "
                "ORDER BY requested_at LIMIT 1",
                (tenant, subject),
            ).fetchall()
            if rows:
                return rows[0][0], True
            erasure_id = "er_" + secrets.token_hex(8)
            db.execute("INSERT INTO erasures VALUES (?, ?, ?, ?, ?)", (erasure_id, tenant, subject, int(purge_sources), now()))
            return erasure_id, False

    def record(self, erasure_id: str, name: str, count: int = 0, status: str = DONE) -> dict:
        """Append a completed step; returns it as the receipt lists it."""
        step = {"name": name, "status": status, "count": int(count), "at": now()}
        with self._tx() as db:
            db.execute("INSERT INTO steps (erasure_id, name, status, count, at) VALUES (?, ?, ?, ?, ?)",
                       (erasure_id, name, status, step["count"], step["at"]))
        return step

    def get(self, erasure_id: str) -> dict:
        """The erasure with its steps so far.

        Raises:
            GovernanceError: no such erasure.
        """
        with self._tx() as db:
            head = db.execute("SELECT tenant, subject, purge_sources, requested_at FROM erasures WHERE erasure_id = ?",
                              (erasure_id,)).fetchone()
            if head is None:
                raise GovernanceError(f"no erasure {erasure_id}")
            steps = db.execute("SELECT name, status, count, at FROM steps WHERE erasure_id = ? ORDER BY seq",
                               (erasure_id,)).fetchall()
        return {
            "erasure_id": erasure_id, "tenant": head[0], "subject": head[1], "purge_sources": bool(head[2]),
            "requested_at": head[3],
            "steps": [{"name": n, "status": s, "count": c, "at": a} for n, s, c, a in steps],
        }

    def unverified_since(self, since: str) -> list[str]:
        """Erasures whose ``verify`` step was not recorded before ``since`` (an ISO timestamp):
        under way at that moment, begun after it, or stopped short of verify. A run that
        started at ``since`` may have embedded their subjects (drift statistics ask)."""
        since_at = datetime.fromisoformat(since)
        with self._tx() as db:
            rows = db.execute("SELECT e.erasure_id, s.at FROM erasures e LEFT JOIN steps s "
                              "ON s.erasure_id = e.erasure_id AND s.name = 'verify' AND s.status = ?", (DONE,)).fetchall()
        return [e for e, at in rows if at is None or datetime.fromisoformat(at) >= since_at]

    def find(self, tenant: Optional[str] = None) -> list[str]:
        """Erasure ids, oldest first (of one tenant when given)."""
        with self._tx() as db:
            sql, args = "SELECT erasure_id FROM erasures", ()
            if tenant is not None:
                sql, args = sql + " WHERE tenant = ?", (tenant,)
            return [r[0] for r in db.execute(sql + " ORDER BY requested_at", args)]
