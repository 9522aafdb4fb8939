"""The master key: the root of the key hierarchy (:mod:`pixlake.platform.governance.keys`).

It comes from the environment or a 0600 file and is never stored by pixlake: env
``PIXLAKE_MASTER_KEY`` > env ``PIXLAKE_MASTER_KEY_FILE`` > ``<governance dir>/master.key``,
which a milvus-lite deployment creates on first use (a server deployment never does).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from pixlake.platform.errors import ConfigError

MASTER_KEY_ENV = "PIXLAKE_MASTER_KEY"
MASTER_KEY_FILE_ENV = "PIXLAKE_MASTER_KEY_FILE"
MASTER_KEY_FILENAME = "master.key"
KEY_BYTES = 32
GENERATE_HINT = 'generate one with `python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"`'


def _decode_key(text: str, where: str) -> bytes:
    s = "".join(text.split())
    for altchars in (None, b"-_"):  # standard, then urlsafe alphabet; padding optional
        try:
            key = base64.b64decode(s + "=" * (-len(s) % 4), altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{where} decodes to {len(key)} bytes, not {KEY_BYTES}; {GENERATE_HINT}")
        return key
    raise ConfigError(f"{where} is not base64 of {KEY_BYTES} bytes; {GENERATE_HINT}")


def _read_key_file(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:  # group/other access to the root of every key: refuse, don't warn
        raise ConfigError(f"master key file {path} is accessible by group/other ({oct(mode)}); run `chmod 600 {path}`")
    return _decode_key(path.read_bytes().decode("utf-8", "replace"), f"master key file {path}")


def _write_new(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _create_key_file(path: Path) -> bytes | None:
    """Write a fresh key to `path`; None when another process created one first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    data = base64.b64encode(key) + b"\n"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, data)
    try:
        # link() publishes the fully written file atomically and never replaces one, so
        # processes racing to create the key all end up with the winner's.
        os.link(tmp, path)
    except FileExistsError:
        return None
    except OSError:  # filesystem without hard links: exclusive create in place
        try:
            _write_new(path, data)
        except FileExistsError:
            return None
    finally:
        tmp.unlink(missing_ok=True)
    return key


def load_master_key(directory: Path, create: bool) -> tuple[bytes, str]:
    """Find the master key: env ``PIXLAKE_MASTER_KEY`` > env ``PIXLAKE_MASTER_KEY_FILE`` > ``directory/master.key``.

    Args:
        directory: Where the local ``master.key`` lives (``governance.key_dir``).
        create: Generate ``directory/master.key`` (mode 0600, directory 0700) when no key is found.

    Returns:
        ``(key, description)``: the 32-byte key and its source (``"env PIXLAKE_MASTER_KEY"``,
        ``"file /x/master.key"``); when just created, a sentence naming the path and asking for a backup.

    Raises:
        ConfigError: No key and not ``create``; a malformed key; a key file missing or open to group/other.
    """
    env = os.environ.get(MASTER_KEY_ENV, "").strip()
    if env:
        return _decode_key(env, f"env {MASTER_KEY_ENV}"), f"env {MASTER_KEY_ENV}"
    file_env = os.environ.get(MASTER_KEY_FILE_ENV, "").strip()
    if file_env:
        path = Path(file_env).expanduser()
        if not path.is_file():
            raise ConfigError(f"{MASTER_KEY_FILE_ENV} points to {path}, which is not a file; fix the path or unset it")
        return _read_key_file(path), f"file {path}"
    path = Path(directory).expanduser() / MASTER_KEY_FILENAME
    if path.exists():
        return _read_key_file(path), f"file {path}"
    if not create:
        raise ConfigError(
            f"no master key: set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}, or set governance.key_dir"
            f" to a directory holding {MASTER_KEY_FILENAME} (looked for {path})"
        )
    key = _create_key_file(path)
    if key is None:
        return _read_key_file(path), f"file {path}"
    return key, f"created a local master key at {path}; back it up: without it every vector and source is unreadable"
