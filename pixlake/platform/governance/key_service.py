"""The key service interface: tenant keys and per-subject data keys, whatever the backend
(local SQLite :class:`~pixlake.platform.governance.local_keys.LocalKeyService`, a KMS or Vault)."""

from __future__ import annotations

import abc
from collections.abc import Sequence


class KeyService(abc.ABC):
    """Interface a key backend (local SQLite, KMS, Vault) implements.

    Tenant keys are wrapped by the master key, data keys by their tenant's current key.
    Subjects are named by pseudonyms (hex strings) only, never raw ids.
    """

    @abc.abstractmethod
    def tenant_key(self, tenant: str, version: int | None = None) -> tuple[int, bytes]:
        """Return ``(version, key)``; None = current (version 1 is created on first use)."""

    @abc.abstractmethod
    def rotate_tenant_key(self, tenant: str) -> int:
        """Make a new current tenant key, re-wrap every data key under it; return its version."""

    @abc.abstractmethod
    def retire_tenant_key(self, tenant: str, version: int) -> None:
        """Destroy an old (non-current) tenant key version."""

    @abc.abstractmethod
    def live_versions(self, tenant: str) -> list[int]:
        """The tenant's key versions not retired, oldest first (empty before first use)."""

    @abc.abstractmethod
    def data_keys(self, tenant: str, pseudonyms: Sequence[str], create: bool = True) -> dict[str, tuple[str, bytes]]:
        """Return ``pseudonym -> (key_id, key)``; shredded pseudonyms are absent."""

    @abc.abstractmethod
    def keys_by_id(self, tenant: str, key_ids: Sequence[str]) -> dict[str, bytes]:
        """Return ``key_id -> key`` for decryption; shredded or unknown ids are absent."""

    @abc.abstractmethod
    def shred(self, tenant: str, pseudonym: str) -> int:
        """Destroy a subject's data keys for good; return how many were destroyed."""

    @abc.abstractmethod
    def is_shredded(self, tenant: str, pseudonym: str) -> bool:
        """Whether the subject was shredded (it then never gets a key again)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's resources."""

    def __enter__(self) -> KeyService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
