"""Append-only audit log of key and erasure events, as JSON lines.

The log proves *that* something happened (a key created, a subject shredded), never
*what* the secret was: callers pass tenants, pseudonyms, key ids, versions and counts
only. Raw subject ids and key material are refused, because an audit log is kept far
longer than the data it describes and must itself survive an erasure request.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Field names that would put a raw (un-pseudonymized) subject id into the log.
FORBIDDEN_FIELDS = frozenset({"subject_id", "raw_subject"})
# Written by record() itself; a caller overriding them would make the log lie.
_RESERVED_FIELDS = frozenset({"at", "event"})


def _open_private(path: str, flags: int) -> int:
    # 0600 at creation time, so the file is never briefly world-readable.
    return os.open(path, flags, 0o600)


class AuditLog:
    """JSON-lines audit log, appended to and never rewritten.

    Each line is ``{"at": <ISO-8601 UTC>, "event": <name>, **fields}``. Several
    processes may append to the same file: every record is one small ``O_APPEND``
    write, which the OS keeps whole.

    Args:
        path: The log file; it and its parent directory are created when missing
            (file mode 0600, directory 0700).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", opener=_open_private):
            pass

    def record(self, event: str, **fields: Any) -> None:
        """Append one event.

        Pass pseudonyms, key ids, versions and counts only — never raw subject ids or
        key material.

        Args:
            event: Dotted event name, e.g. ``"data_key.shredded"``.
            **fields: JSON-serializable details of the event.

        Raises:
            ValueError: A field is named like a raw subject id (``subject_id``,
                ``raw_subject``) or a reserved name (``at``), or a value is bytes
                (which is how key material would arrive).
        """
        bad = sorted(FORBIDDEN_FIELDS.intersection(fields))
        if bad:
            raise ValueError(
                f"audit field {bad[0]!r} would log a raw subject id; pass the pseudonym instead"
            )
        reserved = sorted(_RESERVED_FIELDS.intersection(fields))
        if reserved:
            raise ValueError(f"audit field {reserved[0]!r} is set by AuditLog itself; rename it")
        for name, value in fields.items():
            if isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(
                    f"audit field {name!r} is bytes; the audit log never holds key material"
                )
        entry = {"at": datetime.now(timezone.utc).isoformat(), "event": event, **fields}
        line = json.dumps(entry, sort_keys=False, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8", opener=_open_private) as fh:
            fh.write(line)

    def events(self) -> list[dict]:
        """Return every recorded event, oldest first (empty when the file is missing)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]
