"""Load stage: fetch each item's bytes, hash them and give the row its deterministic id.

The subject pseudonym and the content hash are keyed under the tenant's identity key
(from the governance actor), so neither a raw subject id nor a probe-able plain hash of
the image reaches the store.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from pixlake.platform import records as R
from pixlake.platform.governance.cipher import keyed_hash
from pixlake.platform.images import content_hash
from pixlake.platform.pipeline.rows import OK, rejected, table

log = logging.getLogger(__name__)


class LoadItems:
    """Callable stage over item blocks (see ``sources.ITEM_SCHEMA``).

    Args:
        default_tenant: tenant of items whose source names none.
        max_bytes: files larger than this are rejected without being read.
        governance: the job's governance actor proxy.
    """

    def __init__(self, default_tenant: str, max_bytes: int, governance: Any):
        self.default_tenant = default_tenant
        self.max_bytes = max_bytes
        self.governance = governance
        self._filesystems: dict[str, Any] = {}
        self._identity: dict[str, bytes] = {}

    def _identify(self, tenant: str, subject: str, data: bytes) -> tuple[str, str]:
        """(subject pseudonym, keyed content hash); an item with no subject is its own."""
        if tenant not in self._identity:
            self._identity[tenant] = self.governance.identity_key(tenant)
        key = self._identity[tenant]
        digest = keyed_hash(key, content_hash(data).encode(), "content")
        return keyed_hash(key, (subject or R.item_subject(digest)).encode(), "subject"), digest

    def _read(self, location: str) -> bytes:
        import pyarrow.fs as pafs

        scheme, _, rest = location.rpartition("://")
        if scheme in ("", "file"):
            fs, path = self._filesystems.setdefault("", pafs.LocalFileSystem()), rest
        else:
            # from_uri is slow for object stores (credentials, region): once per bucket.
            key = f"{scheme}://{rest.split('/', 1)[0]}"
            if key not in self._filesystems:
                self._filesystems[key] = pafs.FileSystem.from_uri(location)[0]
            fs, path = self._filesystems[key], rest  # pyarrow paths are "bucket/key"
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError("no such file")
        if info.size is not None and info.size > self.max_bytes:
            raise _TooLarge(f"too_large: {info.size} bytes > cap {self.max_bytes}")
        with fs.open_input_stream(path) as f:
            return f.read()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for item in batch.to_pylist():
            tenant = item["tenant"] or self.default_tenant
            row = {"source": item["source"], "id": "", "tenant": tenant, "subject": "", "content_hash": "",
                   "meta": item["meta"], "status": OK, "reason": "", "image": b""}
            data = item["image"]
            if not data and item["path"]:
                try:
                    data = self._read(item["path"])
                except _TooLarge as e:
                    out.append(rejected(row, str(e)))
                    continue
                except (OSError, ValueError) as e:
                    out.append(rejected(row, f"unreadable: {e}"))
                    continue
            subject, digest = self._identify(tenant, item["subject"], data)
            row.update(id=R.row_id(tenant, subject, digest), subject=subject, content_hash=digest, image=data)
            row["source"] = row["source"] or f"content:{digest}"
            out.append(row)
        return table(out, [("image", pa.binary())])


class _TooLarge(Exception):
    pass
