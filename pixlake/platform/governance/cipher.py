"""Searchable vector encryption, sealed strings and keyed hashes.

Vectors use approximate distance-comparison-preserving encryption (DCPE, "scale and
perturb", Fuchsbauer, Ghosal, Hauke and O'Neill 2022, as in IronCore Labs' Cloaked AI):
``c = s * permute(v) + lambda`` with a secret permutation and scale from the tenant key
and noise ``lambda`` drawn uniformly from the ball of radius ``s * beta / 4``. The noise
comes from a PRF keyed by the subject's data key and a per-row nonce, so the tenant key
alone yields only a noisy approximation and shredding a data key leaves its rows
undecryptable. Strings (sources) are sealed with AES-256-GCM.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from typing import Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pixlake.platform.errors import GovernanceError

NONCE_BYTES = 16
KEY_BYTES = 32
MIN_DATA_KEY_BYTES = 16
GCM_NONCE_BYTES = 12
SEAL_PREFIX = "v1."
# A token is "v1." + unpadded base64 of nonce(12) + ciphertext + tag(16); 4093 base64
# characters carry 3069 bytes, so this many UTF-8 bytes fit a Milvus VARCHAR(4096).
SEAL_MAX_PLAINTEXT_BYTES = (4096 - len(SEAL_PREFIX)) * 3 // 4 - GCM_NONCE_BYTES - 16

_PERMUTATION_LABEL = b"pixlake-dcpe-permutation"
_SCALE_LABEL = b"pixlake-dcpe-scale"
_NOISE_LABEL = b"pixlake-dcpe-noise\0"
_MAX_SCALE = 2.0**16
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]*")
_UNSEAL_FAILED = "sealed value cannot be opened: wrong key, tampered data or other associated data"


def new_nonces(n: int) -> list[bytes]:
    """Draw ``n`` fresh random row nonces of :data:`NONCE_BYTES` bytes each."""
    if n < 0:
        raise GovernanceError(f"cannot draw {n} nonces")
    return [os.urandom(NONCE_BYTES) for _ in range(n)]


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _raw_stream(seed: bytes, count: int) -> np.ndarray:
    # Only the raw Philox output is used: the bit generator is a fixed algorithm, whereas
    # Generator methods (permutation, normal) may change between numpy versions, which
    # would make stored ciphertexts undecryptable after an upgrade.
    return np.random.Philox(key=int.from_bytes(seed[:16], "big")).random_raw(count)


def _noise_from_seeds(seeds: Sequence[bytes], dim: int, radius: float) -> np.ndarray:
    """Uniform points of the ``dim``-ball of ``radius``, one per PRF seed (rows)."""
    pairs = (dim + 1) // 2
    raw = np.empty((len(seeds), 2 * pairs + 1), dtype=np.uint64)
    for i, seed in enumerate(seeds):
        raw[i] = _raw_stream(seed, raw.shape[1])
    # 53-bit floats in (0, 1]: never 0, so the log below is safe.
    u = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
    # Box-Muller over the whole batch: a standard normal direction per row.
    r = np.sqrt(-2.0 * np.log(u[:, :pairs]))
    theta = 2.0 * np.pi * u[:, pairs : 2 * pairs]
    normal = np.concatenate([r * np.cos(theta), r * np.sin(theta)], axis=1)[:, :dim]
    norms = np.linalg.norm(normal, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    # U^(1/d) makes the radius uniform in volume, hence uniform over the ball.
    return normal / norms * (radius * u[:, -1:] ** (1.0 / dim))


def _check_key(key: object, what: str, length: int = KEY_BYTES) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != length:
        raise GovernanceError(f"{what} must be {length} bytes")
    return bytes(key)


class VectorCipher:
    """Scale-and-perturb DCPE for one tenant key version."""

    def __init__(self, tenant_key: bytes, dim: int, beta: float = 1.0):
        """Derive the secret permutation and scale from the tenant key.

        Args:
            tenant_key: 32-byte tenant key (one key version).
            dim: Vector dimension.
            beta: Approximation factor; noise radius is ``beta / 4`` relative to the data.

        Raises:
            GovernanceError: On a key that is not 32 bytes, ``dim < 1`` or ``beta <= 0``.
        """
        key = _check_key(tenant_key, "tenant key")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise GovernanceError(f"vector dimension must be a positive integer, got {dim!r}")
        if not isinstance(beta, (int, float)) or not np.isfinite(beta) or beta <= 0:
            raise GovernanceError(f"beta must be a positive finite number, got {beta!r}")
        self._dim = int(dim)
        self._beta = float(beta)
        # argsort of random words is a version-stable permutation (ties: probability ~0).
        words = _raw_stream(_hmac(key, _PERMUTATION_LABEL), self._dim)
        self._perm = np.argsort(words, kind="stable")
        self._inverse = np.argsort(self._perm, kind="stable")
        u = int.from_bytes(_hmac(key, _SCALE_LABEL)[:8], "big") / 2.0**64
        self._scale = 1.0 + u * (_MAX_SCALE - 1.0)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def beta(self) -> float:
        return self._beta

    @property
    def scale(self) -> float:
        """The secret scale, in [1, 2**16)."""
        return self._scale

    def _matrix(self, vectors: np.ndarray, what: str) -> np.ndarray:
        m = np.asarray(vectors, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != self._dim:
            raise GovernanceError(f"{what} must have shape (n, {self._dim}), got {m.shape}")
        if not np.all(np.isfinite(m)):
            raise GovernanceError(f"{what} contain NaN or infinite values")
        return m

    def _noise(self, data_keys: Sequence[bytes], nonces: Sequence[bytes], n: int) -> np.ndarray:
        if len(data_keys) != n or len(nonces) != n:
            raise GovernanceError(
                f"need a data key and a nonce per row: {n} rows, {len(data_keys)} keys, {len(nonces)} nonces"
            )
        seeds = []
        for key, nonce in zip(data_keys, nonces):
            if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_DATA_KEY_BYTES:
                raise GovernanceError(f"data keys must be at least {MIN_DATA_KEY_BYTES} bytes")
            if not isinstance(nonce, (bytes, bytearray)) or not nonce:
                raise GovernanceError("nonces must be non-empty bytes")
            seeds.append(_hmac(bytes(key), _NOISE_LABEL + bytes(nonce)))
        return self._ball(seeds)

    def _ball(self, seeds: Sequence[bytes]) -> np.ndarray:
        return _noise_from_seeds(seeds, self._dim, self._scale * self._beta / 4.0)

    def encrypt(self, vectors: np.ndarray, data_keys: Sequence[bytes], nonces: Sequence[bytes]) -> np.ndarray:
        """Encrypt rows as ``s * permute(v) + lambda``, noise keyed per row.

        Args:
            vectors: ``(n, dim)`` plaintext vectors.
            data_keys: The subject's data key for each row (at least 16 bytes).
            nonces: A nonce per row (see :func:`new_nonces`); store it beside the row.

        Returns:
            ``(n, dim)`` float32 ciphertexts.

        Raises:
            GovernanceError: On a wrong shape, non-finite values, or bad keys or nonces.
        """
        m = self._matrix(vectors, "vectors")
        noise = self._noise(data_keys, nonces, m.shape[0])
        return (self._scale * m[:, self._perm] + noise).astype(np.float32)

    def decrypt(self, ciphertexts: np.ndarray, data_keys: Sequence[bytes], nonces: Sequence[bytes]) -> np.ndarray:
        """Invert :meth:`encrypt` exactly (to float32 precision).

        Args:
            ciphertexts: ``(n, dim)`` ciphertexts.
            data_keys: The data key each row was encrypted with.
            nonces: The nonce each row was encrypted with.

        Returns:
            ``(n, dim)`` float32 plaintexts; garbage (no error) under a wrong key or nonce.

        Raises:
            GovernanceError: As :meth:`encrypt`.
        """
        m = self._matrix(ciphertexts, "ciphertexts")
        noise = self._noise(data_keys, nonces, m.shape[0])
        return ((m - noise) / self._scale)[:, self._inverse].astype(np.float32)

    def approximate(self, ciphertexts: np.ndarray) -> np.ndarray:
        """Unscale and unpermute with the tenant key alone; the noise stays in.

        Returns:
            ``(n, dim)`` float32 rows, each within ``beta / 4`` (Euclidean) of its plaintext.

        Raises:
            GovernanceError: On a wrong shape or non-finite values.
        """
        m = self._matrix(ciphertexts, "ciphertexts")
        return (m / self._scale)[:, self._inverse].astype(np.float32)

    def encrypt_query(self, vectors: np.ndarray) -> np.ndarray:
        """Encrypt ``(n, dim)`` queries with fresh random noise (no data key needed).

        Returns:
            ``(n, dim)`` float32 ciphertexts; two encryptions of one query differ.

        Raises:
            GovernanceError: On a wrong shape or non-finite values.
        """
        m = self._matrix(vectors, "vectors")
        noise = self._ball([os.urandom(32) for _ in range(m.shape[0])])
        return (self._scale * m[:, self._perm] + noise).astype(np.float32)


def seal(plaintext: str, key: bytes, aad: bytes) -> str:
    """Encrypt and authenticate a string with AES-256-GCM.

    The token is ASCII, ``len = 3 + ceil((28 + utf8_len) * 4 / 3)``: plaintexts up to
    :data:`SEAL_MAX_PLAINTEXT_BYTES` (3041) UTF-8 bytes fit a Milvus VARCHAR(4096), e.g.
    any source of up to ~2.9 KB even with some non-ASCII characters.

    Args:
        plaintext: Text to seal.
        key: 32-byte key.
        aad: Associated data bound to the token (see :func:`associated_data`).

    Returns:
        ``"v1."`` + unpadded urlsafe base64 of nonce + ciphertext + tag.

    Raises:
        GovernanceError: On a non-string plaintext, a key not of 32 bytes or non-bytes aad.
    """
    if not isinstance(plaintext, str):
        raise GovernanceError("only strings can be sealed")
    if not isinstance(aad, (bytes, bytearray)):
        raise GovernanceError("associated data must be bytes")
    aead = AESGCM(_check_key(key, "sealing key"))
    nonce = os.urandom(GCM_NONCE_BYTES)
    body = nonce + aead.encrypt(nonce, plaintext.encode("utf-8"), bytes(aad))
    return SEAL_PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def unseal(token: str, key: bytes, aad: bytes) -> str:
    """Open a token from :func:`seal` with the key and associated data it was sealed with.

    Returns:
        The plaintext.

    Raises:
        GovernanceError: If the token cannot be opened for any reason.
    """
    aead = AESGCM(_check_key(key, "sealing key"))
    if not isinstance(token, str) or not isinstance(aad, (bytes, bytearray)) or not token.startswith(SEAL_PREFIX):
        raise GovernanceError(_UNSEAL_FAILED)
    text = token[len(SEAL_PREFIX):]
    if not _TOKEN_CHARS.fullmatch(text) or len(text) % 4 == 1:
        raise GovernanceError(_UNSEAL_FAILED)
    body = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(body) < GCM_NONCE_BYTES + 16:
        raise GovernanceError(_UNSEAL_FAILED)
    try:
        plain = aead.decrypt(body[:GCM_NONCE_BYTES], body[GCM_NONCE_BYTES:], bytes(aad))
        return plain.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError) as exc:
        raise GovernanceError(_UNSEAL_FAILED) from exc


def associated_data(*parts: str) -> bytes:
    """Encode parts (e.g. row id, tenant, key id) unambiguously as AEAD associated data.

    Each part is written as a 4-byte big-endian length and its UTF-8, so distinct tuples
    never encode alike.

    Raises:
        GovernanceError: If a part is not a string.
    """
    out = bytearray()
    for part in parts:
        if not isinstance(part, str):
            raise GovernanceError(f"associated data parts must be strings, got {type(part).__name__}")
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def keyed_hash(key: bytes, data: bytes, purpose: str, length: int = 32) -> str:
    """Keyed, purpose-separated hash: hex ``HMAC-SHA256(key, purpose + NUL + data)``.

    Args:
        key: Non-empty secret key.
        data: Bytes to hash.
        purpose: Domain label, e.g. ``"subject"`` or ``"content"`` (no NUL characters).
        length: Number of hex characters kept, 1 to 64.

    Returns:
        The first ``length`` hex characters.

    Raises:
        GovernanceError: On an empty key, non-bytes data, a bad purpose or length.
    """
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise GovernanceError("hash key must be non-empty bytes")
    if not isinstance(data, (bytes, bytearray)):
        raise GovernanceError("hashed data must be bytes")
    if not isinstance(purpose, str) or not purpose or "\0" in purpose:
        raise GovernanceError("hash purpose must be a non-empty string without NUL")
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 64:
        raise GovernanceError(f"hash length must be 1 to 64 hex characters, got {length!r}")
    mac = hmac.new(bytes(key), purpose.encode("utf-8") + b"\0" + bytes(data), hashlib.sha256)
    return mac.hexdigest()[:length]


def keyed_content_hash(identity_key: bytes, digest: str) -> str:
    """A row's ``content_hash``: the plain SHA-256 hex ``digest`` of its bytes
    (:func:`pixlake.platform.images.content_hash`), keyed under the tenant's identity key,
    so the store holds no probe-able plain hash. The embed job computes it this way, and
    a thumbnail is drawn only from bytes whose keyed hash matches the row's."""
    return keyed_hash(identity_key, digest.encode(), "content")
