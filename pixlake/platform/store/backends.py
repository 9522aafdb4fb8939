"""What milvus-lite needs beside the client (which backend a ``--db`` names is
:func:`~pixlake.platform.settings.backend_of`).

milvus-lite runs in-process: its path must be writable, one process holds its file lock,
and the per-path server it starts outlives the client, so the store counts its openers
here and releases the server when the last one closes. A Milvus server needs none of
this; what it needs instead (retrying while it is away) is :mod:`.retry`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from pixlake.platform.errors import StoreError
from pixlake.platform.settings import LITE, backend_of

# How long opening milvus-lite waits for another process (a job's store actor still
# exiting) to release the file lock. Read at call time: tests shorten it.
LOCK_WAIT_S = 30.0
# Open stores per milvus-lite path in this process (they share one in-process server).
_lite_users: Counter[str] = Counter()


def check_db_location(uri: str) -> None:
    """Fail early and clearly when a milvus-lite path cannot be created or written.

    Raises:
        ConfigError: ``uri`` is neither a ``.db`` path nor a server URI.
        StoreError: the directory cannot be created or written.
    """
    if backend_of(uri) != LITE:
        return

    parent = Path(uri).expanduser().resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the directory of --db {uri}: {e.strerror or e}") from e
    if not os.access(parent, os.W_OK):
        raise StoreError(f"--db {uri}: directory {parent} is not writable")


def _lite_path(uri: str) -> str:
    return str(Path(uri).expanduser().resolve())


def lite_opened(uri: str) -> None:
    """Count one more open store on the milvus-lite database ``uri`` in this process."""
    _lite_users[_lite_path(uri)] += 1


def lite_closed(uri: str) -> None:
    """Count one store closed; the last one releases milvus-lite's in-process server and
    its file lock (closing a client alone leaves them until the process exits, and other
    processes then could not open the database)."""
    path = _lite_path(uri)
    _lite_users[path] -= 1
    if _lite_users[path] == 0:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)
