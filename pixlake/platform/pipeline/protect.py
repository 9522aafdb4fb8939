"""Protect stage: encrypt each vector (searchable, scale-and-perturb) and seal each source
and sensitive metadata under the subject's data key (docs/architecture.md "Governance").

Per batch and tenant, one call to the governance actor hands out the tenant's crypto handle
(the current key version) and the subjects' data keys; the encryption itself runs here, spread
over the cluster's tasks, through the same derivation re-keying uses. A subject erased
since the read-time check gets no key, and its rows stop here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from pixlake.platform.governance.tenant_crypto import TenantCrypto
from pixlake.platform.pipeline.rows import ERASED, OK, SKIPPED, table


class ProtectRows:
    """Callable stage: ``vector`` → protected ``vector`` plus ``nonce`` and ``key_id``.

    Args:
        governance: the governance actor proxy.
        dim: embedding dimension.
    """

    def __init__(self, governance: Any, dim: int):
        self.governance = governance
        self.dim = dim
        self.encryption = governance.settings_json()["encryption"]
        self._crypto: dict[str, TenantCrypto] = {}

    def _handle(self, crypto: TenantCrypto) -> TenantCrypto:
        # The current version comes with every batch's keys (one actor call), not once per
        # task: after a rotation (pixlake rekey) the next batch already writes under the new
        # key. The handle of an unchanged version is kept, with the ciphers it has built.
        if crypto.tenant not in self._crypto or self._crypto[crypto.tenant].version != crypto.version:
            self._crypto[crypto.tenant] = crypto
        return self._crypto[crypto.tenant]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for r in rows:
            r["nonce"], r["key_id"] = "", ""
        if self.encryption:
            by_tenant: dict[str, list[dict]] = defaultdict(list)
            for r in rows:
                if r["status"] == OK:
                    by_tenant[r["tenant"]].append(r)
            for tenant, group in by_tenant.items():
                self._protect(tenant, group)
        return table(rows, [("vector", pa.list_(pa.float32(), self.dim)), ("nonce", pa.string()), ("key_id", pa.string())])

    def _protect(self, tenant: str, group: list[dict]) -> None:
        crypto, keys = self.governance.protection(tenant, sorted({r["subject"] for r in group}))
        crypto = self._handle(crypto)
        for r in group:
            if r["subject"] not in keys:
                r["status"], r["reason"] = SKIPPED, ERASED
        group = [r for r in group if r["status"] == OK]
        records = [{**r, "meta": json.loads(r["meta"] or "{}")} for r in group]
        for r, p in zip(group, crypto.protect(records, keys)):
            r.update(vector=np.asarray(p["vector"], np.float32), source=p["source"], meta=json.dumps(p["meta"]),
                     nonce=p["nonce"], key_id=p["key_id"])
