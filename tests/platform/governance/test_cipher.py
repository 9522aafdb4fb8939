"""DCPE vector encryption, AES-GCM sealing and keyed hashes: round trips, noise bounds,
search quality under encryption, tamper detection and argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from pixlake.platform.errors import GovernanceError
from pixlake.platform.governance import cipher as C

TENANT = bytes(range(32))
OTHER_TENANT = bytes(range(1, 33))


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _keys(rng: np.random.Generator, n: int) -> list[bytes]:
    return [rng.bytes(32) for _ in range(n)]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.mark.parametrize("dim", [64, 512])
def test_round_trip_with_a_data_key_and_nonce_per_row(dim):
    rng = np.random.default_rng(dim)
    v = _unit(rng, 8, dim)
    keys, nonces = _keys(rng, 8), C.new_nonces(8)
    vc = C.VectorCipher(TENANT, dim, beta=1.0)
    c = vc.encrypt(v, keys, nonces)
    assert c.dtype == np.float32 and c.shape == (8, dim)
    out = vc.decrypt(c, keys, nonces)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, v, atol=1e-5)


def test_ciphertext_hides_the_plaintext():
    rng = np.random.default_rng(1)
    v = _unit(rng, 8, 64)
    vc = C.VectorCipher(TENANT, 64, beta=1.0)
    c = vc.encrypt(v, _keys(rng, 8), C.new_nonces(8)).astype(np.float64)
    assert not np.allclose(c, v, atol=1e-3)
    assert not np.allclose(c / vc.scale, v, atol=1e-3)
    # The permutation scrambles coordinates: a ciphertext does not point where its plaintext does.
    assert np.diag(_cosine(c, v)).max() < 0.9


def test_wrong_data_key_or_nonce_gives_garbage_but_tenant_key_gives_a_bounded_approximation():
    rng = np.random.default_rng(2)
    beta = 1.0
    v = _unit(rng, 16, 64)
    keys, nonces = _keys(rng, 16), C.new_nonces(16)
    vc = C.VectorCipher(TENANT, 64, beta=beta)
    c = vc.encrypt(v, keys, nonces)
    for bad_keys, bad_nonces in ((_keys(rng, 16), nonces), (keys, C.new_nonces(16))):
        wrong = vc.decrypt(c, bad_keys, bad_nonces)
        assert np.linalg.norm(wrong - v, axis=1).min() > 0.05
    err = np.linalg.norm(vc.approximate(c) - v, axis=1)
    assert np.all(err <= beta / 4 + 1e-5)
    assert np.all(err > 0)


@pytest.mark.parametrize("dim,beta", [(64, 1.0), (512, 0.3), (64, 2.0)])
def test_noise_lies_in_the_ball_of_radius_s_beta_over_4_and_is_not_negligible(dim, beta):
    rng = np.random.default_rng(3)
    v = _unit(rng, 200, dim)
    vc = C.VectorCipher(TENANT, dim, beta=beta)
    c = vc.encrypt(v, _keys(rng, 200), C.new_nonces(200)).astype(np.float64)
    # White-box: the secret permutation is what the construction applies before scaling.
    noise = np.linalg.norm(c - vc.scale * v[:, vc._perm], axis=1)
    bound = vc.scale * beta / 4
    assert np.all(noise <= bound * (1 + 1e-5))
    # Uniform in the ball: radius ~ U^(1/d), so most mass sits near the rim.
    assert noise.mean() > 0.8 * bound
    assert noise.min() > 0


def test_noise_is_deterministic_per_key_and_nonce_and_queries_are_randomised():
    rng = np.random.default_rng(4)
    v = _unit(rng, 4, 64)
    keys, nonces = _keys(rng, 4), C.new_nonces(4)
    vc = C.VectorCipher(TENANT, 64)
    c1 = vc.encrypt(v, keys, nonces)
    assert np.array_equal(c1, C.VectorCipher(TENANT, 64).encrypt(v, keys, nonces))
    c2 = vc.encrypt(v, keys, C.new_nonces(4))
    assert np.all(np.any(c1 != c2, axis=1))
    assert np.all(np.any(vc.encrypt_query(v) != vc.encrypt_query(v), axis=1))


def test_tenant_keys_give_different_permutations_and_scales():
    rng = np.random.default_rng(5)
    v = _unit(rng, 4, 64)
    keys, nonces = _keys(rng, 4), C.new_nonces(4)
    a, b = C.VectorCipher(TENANT, 64), C.VectorCipher(OTHER_TENANT, 64)
    assert a.scale != b.scale and 1 <= a.scale < 2**16 and 1 <= b.scale < 2**16
    assert not np.array_equal(a._perm, b._perm)
    assert sorted(a._perm.tolist()) == list(range(64))
    # Another tenant's key cannot even approximate the plaintext.
    c = a.encrypt(v, keys, nonces)
    assert np.linalg.norm(b.approximate(c) - v, axis=1).min() > 0.5


def test_derivation_is_pinned_so_stored_ciphertexts_stay_decryptable():
    # Known answer: a change here (numpy, labels, noise sampler) would orphan stored vectors.
    vc = C.VectorCipher(TENANT, 8, beta=1.0)
    assert vc.scale == pytest.approx(892.7178302991332, rel=1e-12)
    v = np.array([[0.5, -0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]])
    c = vc.encrypt(v, [bytes(32)], [bytes(16)])
    expected = [39.01023483, 595.78991699, 4.08094311, -66.32650757, -434.91488647, 24.46260452, 364.71261597, -475.00207520]
    np.testing.assert_allclose(c[0], expected, rtol=1e-6)


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, centres.shape[1]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_distance_comparisons_are_approximately_preserved():
    rng = np.random.default_rng(6)
    dim, k = 64, 10
    # 40 clusters of ~50: tight enough that beta=0.1 noise barely reorders neighbours.
    centres = _unit(rng, 40, dim)
    x, q = _clustered(rng, centres, 2000, 0.1), _clustered(rng, centres, 200, 0.1)
    # Seeded nonces; only encrypt_query's noise is random, and the margins below absorb it.
    keys, nonces = _keys(rng, len(x)), [rng.bytes(C.NONCE_BYTES) for _ in x]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :k]
    recall, order_at = {}, {}
    for beta in (0.1, 0.5, 2.0):
        vc = C.VectorCipher(TENANT, dim, beta=beta)
        order = np.argsort(-_cosine(vc.encrypt_query(q), vc.encrypt(x, keys, nonces)), axis=1)
        recall[beta], order_at[beta] = _recall(order[:, :k], truth), order
    assert recall[0.1] > 0.9
    assert recall[0.1] > recall[0.5] > recall[2.0]

    # Over-fetch on ciphertexts, decrypt the candidates, rerank exactly.
    vc = C.VectorCipher(TENANT, dim, beta=1.0)
    cx = vc.encrypt(x, keys, nonces)
    cand = np.argsort(-_cosine(vc.encrypt_query(q), cx), axis=1)[:, :50]
    reranked = []
    for qi, rows in enumerate(cand):
        plain = vc.decrypt(cx[rows], [keys[j] for j in rows], [nonces[j] for j in rows])
        reranked.append(rows[np.argsort(-(plain @ q[qi]))[:k]])
    assert _recall(np.array(reranked), truth) >= 0.99


def test_seal_round_trip_and_tamper_detection():
    key, aad = bytes(range(32)), C.associated_data("row-1", "acme", "k1")
    text = "Grüße, 東京 — ok ✓"
    token = C.seal(text, key, aad)
    assert token.startswith("v1.") and token.isascii() and text not in token
    assert C.unseal(token, key, aad) == text
    assert C.seal(text, key, aad) != token
    assert C.unseal(C.seal("", key, aad), key, aad) == ""
    bad = [
        (token, key, C.associated_data("row-2", "acme", "k1")),
        (token, bytes(32), aad),
        (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), key, aad),
        (token[:10] + ("x" if token[10] != "x" else "y") + token[11:], key, aad),
        ("v2." + token[3:], key, aad),
        ("v1.!!!!", key, aad),
        ("v1.AAAA", key, aad),
        (token[:-1], key, aad),
    ]
    for tok, k, a in bad:
        with pytest.raises(GovernanceError, match="cannot be opened"):
            C.unseal(tok, k, a)


def test_sealed_source_fits_a_milvus_varchar_4096():
    key, aad = bytes(32), C.associated_data("r", "t", "k")
    assert len(C.seal("x" * 2900, key, aad)) <= 4096
    assert len(C.seal("x" * C.SEAL_MAX_PLAINTEXT_BYTES, key, aad)) <= 4096
    assert len(C.seal("x" * (C.SEAL_MAX_PLAINTEXT_BYTES + 1), key, aad)) > 4096


def test_associated_data_is_unambiguous():
    assert C.associated_data("ab", "c") != C.associated_data("a", "bc")
    assert C.associated_data("a") != C.associated_data("a", "")
    assert C.associated_data("r", "t") == C.associated_data("r", "t")


def test_keyed_hash():
    h = C.keyed_hash(b"k" * 32, b"alice", "subject")
    assert h == C.keyed_hash(b"k" * 32, b"alice", "subject")
    assert len(h) == 32 and int(h, 16) >= 0
    assert h != C.keyed_hash(b"j" * 32, b"alice", "subject")
    assert h != C.keyed_hash(b"k" * 32, b"alice", "content")
    assert h != C.keyed_hash(b"k" * 32, b"bob", "subject")
    assert len(C.keyed_hash(b"k", b"x", "content", length=64)) == 64
    assert C.keyed_hash(b"k", b"x", "content", length=12) == C.keyed_hash(b"k", b"x", "content")[:12]


def _vc() -> C.VectorCipher:
    return C.VectorCipher(TENANT, 4)


GOOD_ROWS = np.zeros((2, 4))
BAD_CALLS = [
    lambda: C.VectorCipher(b"short", 4),
    lambda: C.VectorCipher("x" * 32, 4),
    lambda: C.VectorCipher(TENANT, 0),
    lambda: C.VectorCipher(TENANT, 4, beta=0),
    lambda: C.VectorCipher(TENANT, 4, beta=-1.0),
    lambda: C.VectorCipher(TENANT, 4, beta=float("nan")),
    lambda: _vc().encrypt(np.zeros((2, 5)), [TENANT] * 2, [b"n"] * 2),
    lambda: _vc().encrypt(np.zeros(4), [TENANT], [b"n"]),
    lambda: _vc().encrypt(np.full((2, 4), np.nan), [TENANT] * 2, [b"n"] * 2),
    lambda: _vc().encrypt(GOOD_ROWS, [TENANT], [b"n"] * 2),
    lambda: _vc().encrypt(GOOD_ROWS, [TENANT] * 2, [b"n"]),
    lambda: _vc().encrypt(GOOD_ROWS, [b"tiny"] * 2, [b"n"] * 2),
    lambda: _vc().decrypt(GOOD_ROWS, [TENANT] * 2, [b""] * 2),
    lambda: _vc().approximate(np.zeros((2, 3))),
    lambda: _vc().encrypt_query(np.zeros((1, 5))),
    lambda: C.new_nonces(-1),
    lambda: C.seal("x", b"short", b""),
    lambda: C.seal(b"x", bytes(32), b""),
    lambda: C.seal("x", bytes(32), "aad"),
    lambda: C.unseal("v1.AAAA", b"short", b""),
    lambda: C.associated_data("a", 1),
    lambda: C.keyed_hash(b"", b"x", "subject"),
    lambda: C.keyed_hash(b"k", "x", "subject"),
    lambda: C.keyed_hash(b"k", b"x", ""),
    lambda: C.keyed_hash(b"k", b"x", "a\0b"),
    lambda: C.keyed_hash(b"k", b"x", "subject", length=0),
    lambda: C.keyed_hash(b"k", b"x", "subject", length=65),
]


@pytest.mark.parametrize("call", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_bad_arguments_raise_governance_error(call):
    with pytest.raises(GovernanceError):
        call()


def test_empty_batches_and_nonces():
    vc = _vc()
    assert vc.encrypt(np.zeros((0, 4)), [], []).shape == (0, 4)
    assert vc.decrypt(np.zeros((0, 4)), [], []).shape == (0, 4)
    nonces = C.new_nonces(3)
    assert len(nonces) == 3 and all(len(n) == C.NONCE_BYTES for n in nonces) and len(set(nonces)) == 3
