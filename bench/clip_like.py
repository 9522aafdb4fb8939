"""Synthetic CLIP-like 512-d unit vectors for the index benchmarks (``bench/scale.py``'s
module docstring says why they look like this), and their measured statistics."""

from __future__ import annotations

import numpy as np

DIM = 512


class LowRank:
    """CLIP-like unit vectors (the default data; see the module docstring): topic centres and
    within-topic variation both follow a power-law spectrum (variance of the i-th direction
    ∝ i^-alpha) in a random orthonormal basis, plus one mean vector per modality."""

    def __init__(self, n_topics: int, alpha: float = 1.0, spread: float = 0.7, mean_norm: float = 0.9, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
        scale = np.arange(1, DIM + 1, dtype=np.float64) ** (-alpha / 2)
        self.scale = (scale / np.linalg.norm(scale)).astype(np.float32)  # a topic centre has norm ~1
        self.topics = rng.standard_normal((n_topics, DIM), dtype=np.float32) * self.scale
        means = rng.standard_normal((2, DIM)).astype(np.float32)
        means *= mean_norm / np.linalg.norm(means, axis=1, keepdims=True)
        self.means = {"image": means[0], "text": means[1]}
        self.spread = {"image": spread, "text": spread * 4 / 3}  # a caption pins its topic down less than a photo

    def sample(self, n: int, seed: int, modality: str = "image") -> np.ndarray:
        rng = np.random.default_rng(seed)
        z = self.topics[rng.integers(0, len(self.topics), n)]
        z += self.spread[modality] * rng.standard_normal((n, DIM), dtype=np.float32) * self.scale
        x = z @ self.basis.T + self.means[modality]
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Isotropic:
    """The earlier generator (``--data isotropic``): isotropic Gaussian noise as large as the
    centre around each of the centres, text queries offset by one shared random vector."""

    def __init__(self, n_topics: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((n_topics, DIM), dtype=np.float32)
        self.gap = rng.standard_normal(DIM, dtype=np.float32)

    def sample(self, n: int, seed: int, modality: str = "image") -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = self.centres[rng.integers(0, len(self.centres), n)]
        x = x + (0.9 if modality == "image" else 1.2) * rng.standard_normal((n, DIM), dtype=np.float32)
        if modality == "text":
            x += self.gap
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors(gen, n: int) -> np.ndarray:
    """``n`` rows of ``gen`` in 100k chunks, each seeded by its offset (the same rows at any ``n``)."""
    return np.concatenate([gen.sample(min(100_000, n - s), 1 + s) for s in range(0, n, 100_000)])


def describe_data(base: np.ndarray, scores: dict[str, np.ndarray], text_q: np.ndarray) -> str:
    """What the data looks like, measured, so it can be compared with real embeddings."""
    rng = np.random.default_rng(5)
    some = base[rng.choice(len(base), min(len(base), 2000), replace=False)]
    pair = some @ some.T
    sample = base[rng.choice(len(base), min(len(base), 20_000), replace=False)]
    var = np.linalg.svd(sample - sample.mean(0), compute_uv=False) ** 2
    share = np.cumsum(var) / var.sum()
    nn = {q: "/".join(f"{s[:, j].mean():.2f}" for j in (0, 9, 99) if j < s.shape[1]) for q, s in scores.items()}
    return (f"data: mean cosine image-image {pair[np.triu_indices(len(some), 1)].mean():.2f}, text-image "
            f"{(text_q @ some.T).mean():.2f}; cosine of the 1st/10th/100th nearest neighbour: image queries {nn['image']}, "
            f"text queries {nn['text']}; variance in the top 16/64/128 principal directions "
            f"{share[15]:.0%}/{share[63]:.0%}/{share[127]:.0%}")
