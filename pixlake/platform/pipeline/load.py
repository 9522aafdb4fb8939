"""Load stage: fetch each item's bytes, hash them and give the row its deterministic id.

The job's tenant is every row's tenant: a manifest naming another one is a rejected row
(``tenant_mismatch``) unless the operator allowed manifest tenants, so the author of a
manifest cannot write into a tenant the job was not started for.

The subject pseudonym and the content hash are keyed under the tenant's identity key,
derived by the tenant's crypto handle from the governance actor (the derivation erasure
uses too), so neither a raw subject id nor a probe-able plain hash of the image reaches
the store.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from pixlake.platform import records as R
from pixlake.platform.governance.tenant_crypto import TenantCrypto
from pixlake.platform.pipeline.rows import OK, rejected, table
from pixlake.platform.sources.reader import SourceReader, SourceRefused, SourceTooLarge, SourceUnavailable

log = logging.getLogger(__name__)


class LoadItems:
    """Callable stage over item blocks (see ``sources.ITEM_SCHEMA``).

    Args:
        default_tenant: the job's tenant, of every row.
        max_bytes: files larger than this are rejected (at most ``max_bytes + 1`` bytes read).
        governance: the job's governance actor proxy.
        allow_manifest_tenants: let an item's own tenant (a manifest's) choose its row's
            tenant; otherwise an item naming another tenant than ``default_tenant`` is rejected.
    """

    def __init__(self, default_tenant: str, max_bytes: int, governance: Any, allow_manifest_tenants: bool = False):
        self.default_tenant = default_tenant
        self.allow_manifest_tenants = allow_manifest_tenants
        self.reader = SourceReader(max_bytes)
        self.governance = governance
        self._crypto: dict[str, TenantCrypto] = {}  # identity keys are never rotated: one ask per tenant

    def _identify(self, tenant: str, subject: str, data: bytes) -> tuple[str, str]:
        """(subject pseudonym, keyed content hash); an item with no subject is its own."""
        if tenant not in self._crypto:
            self._crypto[tenant] = self.governance.tenant_crypto(tenant, vectors=False)
        return self._crypto[tenant].identify(subject, data)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for item in batch.to_pylist():
            tenant = item["tenant"] or self.default_tenant
            row = {"source": item["source"], "id": "", "tenant": tenant, "subject": "", "content_hash": "",
                   "meta": item["meta"], "status": OK, "reason": "", "image": b""}
            if tenant != self.default_tenant and not self.allow_manifest_tenants:
                row["tenant"] = self.default_tenant  # no later stage looks the named tenant up for it
                out.append(rejected(row, f"tenant_mismatch: manifest names tenant {tenant!r}, job runs as "
                                         f"{self.default_tenant!r} (--allow-manifest-tenants lets manifests choose)"))
                continue
            data = item["image"]
            if not data and item["path"]:
                try:
                    data = self.reader.read(item["path"])
                except (SourceTooLarge, SourceRefused) as e:
                    out.append(rejected(row, str(e)))
                    continue
                except (SourceUnavailable, OSError, ValueError) as e:  # missing, a device or FIFO, no permission
                    out.append(rejected(row, f"unreadable: {e}"))
                    continue
            subject, digest = self._identify(tenant, item["subject"], data)
            row.update(id=R.row_id(tenant, subject, digest), subject=subject, content_hash=digest, image=data)
            row["source"] = row["source"] or f"content:{digest}"
            out.append(row)
        return table(out, [("image", pa.binary())])
