"""Key hierarchy: master key -> per-tenant keys -> per-subject data keys.

The master key comes from the environment or a 0600 file and is never stored by pixlake
(:mod:`.master_key`). It wraps (AES-GCM) the tenant keys; each tenant key wraps its
tenant's data keys, one per subject pseudonym. Erasure ("crypto-shredding") deletes a
subject's data keys, so every copy of its rows, wherever it is, becomes undecryptable.
Keys live in their own store (:class:`~.local_keys.LocalKeyService`, or a KMS/Vault
behind the :class:`~.key_service.KeyService` interface), never in the vector DB.

This module gathers the names other code imports.
"""

from pixlake.platform.governance.key_service import KeyService
from pixlake.platform.governance.local_keys import LocalKeyService
from pixlake.platform.governance.master_key import (
    KEY_BYTES,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    MASTER_KEY_FILENAME,
    load_master_key,
)

__all__ = ["KEY_BYTES", "MASTER_KEY_ENV", "MASTER_KEY_FILE_ENV", "MASTER_KEY_FILENAME", "KeyService", "LocalKeyService",
           "load_master_key"]
