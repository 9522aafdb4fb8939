"""Shared fixtures: a tiny open_clip model with seeded random weights, synthetic corpora,
milvus-lite under tmp_path, and one local Ray instance per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY = ("pixlake-tiny", "none")  # (model, pretrained): registered bundled config, seeded random weights
# The tiny model's random embeddings crowd together (mean pairwise cosine 0.88, nearest
# neighbour at distance 0.06), so the default encryption noise (radius beta/4 = 0.25) would
# swamp their differences; tests over it use a beta scaled to that spread. The demo model's
# embeddings (nearest neighbour at 0.62) are tested at the default beta.
TINY_BETA = 0.05
TINY_ENV = {"PIXLAKE_GOVERNANCE__BETA": str(TINY_BETA)}


@pytest.fixture(scope="session")
def tiny_encoder():
    """The tiny encoder, loaded once on CPU."""
    from pixlake.platform.encoder import load_encoder

    return load_encoder(*TINY, device="cpu")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the tests that run pipelines in-process (starting Ray costs seconds)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """48 distinct synthetic PNG images (seeded)."""
    from pixlake.platform.corpus import write_corpus

    out = tmp_path / "corpus"
    write_corpus(out, 48, seed=1)
    return out / "images"


def tiny_settings(db: Path, **job):
    """Settings for the tiny model writing into ``db``."""
    from pixlake.platform.settings import load_settings

    return load_settings(
        overrides={
            "store": {"db": str(db), "collection": "images"},
            "encoder": {"model": TINY[0], "pretrained": TINY[1]},
            "job": {"batch_size": 16, **job},
            "governance": {"beta": TINY_BETA},
        }
    )
