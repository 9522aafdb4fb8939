"""Files that hold personal or secret data: created 0600, written whole or not at all."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path | str, text: str | bytes) -> None:
    """Write ``text`` (UTF-8) or bytes to ``path`` with mode 0600, atomically.

    The data goes to a new temporary file beside ``path``, created 0600 by ``os.open`` itself
    (``O_EXCL``: never an existing file or a planted link), so no permissive umask and no
    moment between writing and a ``chmod`` ever exposes it; ``os.replace`` then puts it in
    place, and a reader or a crash sees the old file or the new one, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
