"""What searchable encryption costs: recall, job throughput, query latency.

Realistic embeddings: the bundled demo model's embeddings of a corpus it never saw (not
uniform random vectors). Printed, all measured in this one process:

1. recall@10 against exact plaintext search, for beta in {0.5, 1, 1.5, 2}: searching the
   ciphertexts alone, and after decrypting the top ``rerank_factor x 10`` candidates and
   re-ranking them exactly (factors 2, 5, 10); image and text queries separately. Candidate
   search here is exact cosine over ciphertexts (numpy), so the figures isolate the
   encryption's effect from the index's.
2. The embed job's throughput with protection on and off (``--no-encryption``), alternating
   runs over the same images, each into a fresh milvus-lite database.
3. Query latency through the store with re-ranking (encrypted collection) beside the same
   query path on the plaintext collection.

Usage: ``python bench/crypto_recall.py [--n 2000] [--job-n 1000] [--queries 200]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixlake.platform.corpus import HOLDOUT_TEMPLATES, MANIFEST, query_text, write_corpus  # noqa: E402
from pixlake.platform.encoder import load_encoder  # noqa: E402
from pixlake.platform.governance.cipher import VectorCipher, new_nonces  # noqa: E402
from pixlake.platform.index_plan import exact_topk, normalise, recall  # noqa: E402

MODEL = ("pixlake-demo", "bundled")
BETAS = (0.5, 1.0, 1.5, 2.0)
FACTORS = (2, 5, 10)
K = 10


def _topk(queries: np.ndarray, base: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """Exact top-k by cosine; with ``exclude_self``, query i never finds row i."""
    return exact_topk(normalise(queries), normalise(base), k, np.arange(len(queries)) if exclude_self else None)[0]


def recall_table(plain: np.ndarray, text: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Recall@10 of ciphertext search and of decrypt-and-re-rank, per beta and query type."""
    n_img = min(500, len(plain))
    kinds = {"image": (plain[:n_img], True), "text": (text, False)}
    truth = {kind: _topk(q, plain, K, self_) for kind, (q, self_) in kinds.items()}
    lines = ["| beta | query | ciphertext only | " + " | ".join(f"re-rank x{f}" for f in FACTORS) + " |",
             "|---:|---|---:|" + "---:|" * len(FACTORS)]
    keys = [rng.bytes(32) for _ in range(len(plain))]
    for beta in BETAS:
        cipher = VectorCipher(rng.bytes(32), plain.shape[1], beta)
        nonces = new_nonces(len(plain))
        stored = cipher.encrypt(plain, keys, nonces)
        decrypted = cipher.decrypt(stored, keys, nonces)
        for kind, (queries, self_) in kinds.items():
            enc_q = cipher.encrypt_query(queries)
            cells = [f"{recall(_topk(enc_q, stored, K, self_), truth[kind]):.3f}"]
            for factor in FACTORS:
                candidates = _topk(enc_q, stored, K * factor, self_)
                exact = np.einsum("qd,qcd->qc", queries, decrypted[candidates])
                reranked = np.take_along_axis(candidates, np.argsort(-exact, axis=1)[:, :K], axis=1)
                cells.append(f"{recall(reranked, truth[kind]):.3f}")
            lines.append(f"| {beta} | {kind} | " + " | ".join(cells) + " |")
    return lines


def job_throughput(manifest: Path, work: Path, rounds: int) -> dict[str, list[float]]:
    """images/s of the embed job with protection on and off, alternating."""
    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings

    rates: dict[str, list[float]] = {"protected": [], "plaintext": []}
    plan = [("warm-up", -1)] + [(mode, i) for i in range(rounds)
                                for mode in (("protected", "plaintext") if i % 2 == 0 else ("plaintext", "protected"))]
    for mode, i in plan:
        settings = load_settings(overrides={
            "store": {"db": str(work / f"{mode}-{i}.db"), "collection": "images"},
            "encoder": {"model": MODEL[0], "pretrained": MODEL[1]},
            "governance": {"encryption": mode != "plaintext", "key_dir": str(work / "keys")},
        })
        report = run_embed_job(str(manifest), settings)  # the warm-up starts Ray and fills caches
        if mode != "warm-up":
            rates[mode].append(report.images_per_s)
    return rates


def stage_cost(encoder, images: list, n: int = 1000) -> tuple[float, float]:
    """CPU ms per 1000 rows of the protect stage's work (keys in hand: encrypt + seal) and of
    the embed stage's forward pass, measured back to back in this process."""
    from pixlake.platform.governance.service import protect_rows

    rng = np.random.default_rng(1)
    pixels = np.stack([np.asarray(encoder.preprocess.pil_transform()(im)) for im in images[:256]])
    started = time.perf_counter()
    vectors = np.concatenate([encoder.embed_pixels(pixels) for _ in range(max(1, n // len(pixels)))])
    embed_ms = (time.perf_counter() - started) * 1000 * 1000 / len(vectors)
    keys = {f"{i:032x}": (f"k{i}", rng.bytes(32)) for i in range(len(vectors))}
    records = [{"id": f"{i:032x}", "tenant": "t", "subject": f"{i:032x}", "source": f"/data/images/{i:08d}.jpg",
                "meta": {"label": "x"}, "vector": v} for i, v in enumerate(vectors)]
    cipher = VectorCipher(rng.bytes(32), vectors.shape[1], 1.0)
    started = time.perf_counter()
    protect_rows(records, 1, cipher, keys, ())
    protect_ms = (time.perf_counter() - started) * 1000 * 1000 / len(vectors)
    return protect_ms, embed_ms


def query_latency(work: Path, encoder, queries: np.ndarray) -> dict[str, float]:
    """p50 ms of QueryCollection.search (k=10) on the protected and the plaintext collection."""
    from pixlake.platform.query import open_collection
    from pixlake.platform.settings import load_settings

    out = {}
    for mode in ("protected", "plaintext"):
        protected = mode == "protected"
        settings = load_settings(overrides={
            "store": {"db": str(work / f"{mode}-0.db"), "collection": "images"},
            "encoder": {"model": MODEL[0], "pretrained": MODEL[1]},
            # the baseline fetches exactly k: no re-rank
            "governance": {"encryption": protected, "key_dir": str(work / "keys"), "rerank_factor": 5 if protected else 1},
        })
        collection = open_collection(settings, encoder.fingerprint)
        try:
            times = []
            for q in queries:
                started = time.perf_counter()
                collection.search(q, k=K)
                times.append((time.perf_counter() - started) * 1000)
        finally:
            collection.close()
        out[mode] = statistics.median(times)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images whose embeddings the recall table uses")
    parser.add_argument("--job-n", type=int, default=1000, help="images per embed-job run")
    parser.add_argument("--rounds", type=int, default=3, help="embed-job runs per mode (after one warm-up run)")
    parser.add_argument("--queries", type=int, default=200, help="queries for the latency figures")
    args = parser.parse_args(argv)
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="pixlake-crypto-"))
    os.environ.pop("RAY_ADDRESS", None)
    encoder = load_encoder(*MODEL, device="cpu")
    write_corpus(work / "corpus", args.n, seed=5, holdout=1.0)  # the demo model trained on seed 0
    rows = pq.read_table(work / "corpus" / MANIFEST).to_pylist()
    plain = encoder.embed_images([Image.open(work / "corpus" / r["path"]).convert("RGB") for r in rows])
    labels = sorted({r["label"] for r in rows})
    text = encoder.embed_texts([query_text(label, t) for label in labels for t in HOLDOUT_TEMPLATES])
    print(f"== recall@10 vs exact plaintext search ({len(plain)} demo-model embeddings of unseen images, "
          f"{min(500, len(plain))} image and {len(text)} text queries)")
    print("\n".join(recall_table(plain, text, rng)))

    protect_ms, embed_ms = stage_cost(encoder, [Image.open(work / "corpus" / r["path"]).convert("RGB") for r in rows[:256]])
    print(f"\n== stage cost per 1000 rows, same process: protect (encrypt + seal) {protect_ms:.1f} ms, "
          f"embed forward pass {embed_ms:.1f} ms; protect / embed = {protect_ms / embed_ms:.3f}")

    write_corpus(work / "job", args.job_n, seed=6, holdout=1.0)
    rates = job_throughput(work / "job" / MANIFEST, work, args.rounds)
    p, u = statistics.median(rates["protected"]), statistics.median(rates["plaintext"])
    print(f"\n== embed job, {args.job_n} images, {args.rounds} alternating runs per mode (images/s)")
    print(f"protected {rates['protected']}  plaintext {rates['plaintext']}")
    print(f"median protected {p:.1f} / plaintext {u:.1f} = {p / u:.3f} (protection costs {100 * (1 - p / u):.1f}%)")

    queries = encoder.embed_texts([query_text(labels[i % len(labels)], HOLDOUT_TEMPLATES[i % 4]) for i in range(args.queries)])
    lat = query_latency(work, encoder, queries)
    print(f"\n== query latency, k={K}, {args.queries} text queries, p50 ms through QueryCollection.search")
    print(f"protected (encrypt query, fetch x5, decrypt, re-rank) {lat['protected']:.2f}  "
          f"plaintext {lat['plaintext']:.2f}  ratio {lat['protected'] / lat['plaintext']:.2f}")


if __name__ == "__main__":
    main()
