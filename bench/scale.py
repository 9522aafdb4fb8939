"""How cost grows toward 100M images: the index on a real Milvus server, and the embed job.

Part 1 (``--vectors N``, default 1M): N realistic 512-d vectors — clustered like real
embeddings, with text queries offset by a shared "modality gap" as CLIP's are, not uniform
noise — go into the embedded Milvus server twice in one run: a FLAT (exact) collection and
an IVF_PQ collection built from ``pixlake plan-index``'s choice on a sample. Printed beside
each other: index bytes/vector, recall@10 against exact search (image and text queries,
with and without the store's re-rank of rerank_factor × k candidates read back from
Milvus), QPS at concurrency 1 and 16, load + index build time.

Part 2 (``--images 1000,10000,100000``): the embed job's wall time at each size (tiny
model, milvus-lite), a least-squares fit t = a + b·n, and the share of per-image CPU time
in read / decode / embed / protect / write, each stage timed alone in this process.

Usage: ``python bench/scale.py [--vectors 1000000] [--images 1000,10000,100000] [--skip-index] [--skip-job]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIM, K, RERANK = 512, 10, 5


# --- part 1: the index on a Milvus server ----------------------------------------------------


def clustered(n: int, seed: int, centres: np.ndarray, spread: float, offset: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors around ``centres`` (+ a shared offset), in float32."""
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    if offset is not None:
        x += offset
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Exact top-k by inner product, over the base in chunks (bounded memory)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(base), chunk):
        s = queries @ base[start:start + chunk].T
        idx = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, idx, 1)], 1)
        cand_i = np.concatenate([best_i, idx + start], 1)
        order = np.argsort(-cand_s, 1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t)) / K for f, t in zip(found, truth)]))


def load(client, name: str, vectors: np.ndarray, index: dict, batch: int = 20_000) -> float:
    """Create a minimal collection (int id, vector), insert, build the index; returns seconds."""
    from pymilvus import DataType, MilvusClient

    started = time.perf_counter()
    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
    params = client.prepare_index_params()
    params.add_index(field_name="vector", metric_type="COSINE", **index)
    client.create_collection(name, schema=schema, index_params=params)
    for s in range(0, len(vectors), batch):
        client.insert(name, [{"id": s + i, "vector": v.tolist()} for i, v in enumerate(vectors[s:s + batch])])
    client.flush(name)
    while True:
        d = client.describe_index(name, "vector")
        if d.get("pending_index_rows", 0) == 0 and d.get("indexed_rows", 0) >= len(vectors):
            break
        time.sleep(1)
    client.release_collection(name)
    client.load_collection(name)  # so searches use the built index
    return time.perf_counter() - started


def search(client, name: str, queries: np.ndarray, search_params: dict, base: np.ndarray, rerank: bool) -> list[list[int]]:
    """Top-k ids; with ``rerank``, RERANK×k candidates re-ranked exactly with their stored vectors."""
    limit = K * RERANK if rerank else K
    res = client.search(name, data=queries.tolist(), limit=limit, search_params={"metric_type": "COSINE", "params": search_params},
                        output_fields=["vector"] if rerank else [])
    out = []
    for q, hits in zip(queries, res):
        if rerank:
            vecs = np.array([h["entity"]["vector"] for h in hits], np.float32)
            order = np.argsort(-(vecs @ q))
            out.append([hits[i]["id"] for i in order[:K]])
        else:
            out.append([h["id"] for h in hits])
    return out


def qps(client, name: str, queries: np.ndarray, search_params: dict, concurrency: int, seconds: float) -> float:
    deadline = time.perf_counter() + seconds

    def worker(offset: int) -> int:
        done = 0
        while time.perf_counter() < deadline:
            q = queries[(offset + done) % len(queries)]
            client.search(name, data=[q.tolist()], limit=K, search_params={"metric_type": "COSINE", "params": search_params})
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(worker, range(concurrency)))
    return total / (time.perf_counter() - started)


def index_part(n: int, queries_n: int, qps_seconds: float) -> None:
    from milvus import MilvusServer
    from pymilvus import MilvusClient

    from pixlake.platform.index_plan import plan_index

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(100, n // 500), DIM), dtype=np.float32)
    gap = rng.standard_normal(DIM, dtype=np.float32)  # one offset shared by all text queries, as large as a centre
    t0 = time.perf_counter()
    base = np.concatenate([clustered(min(100_000, n - s), 1 + s, centres, 0.9) for s in range(0, n, 100_000)])
    image_q = clustered(queries_n, 999, centres, 0.9)
    text_q = clustered(queries_n, 998, centres, 1.2, offset=gap)
    print(f"== index on a Milvus server: {n:,} clustered {DIM}-d vectors (generated in {time.perf_counter() - t0:.0f} s), "
          f"{queries_n} image and {queries_n} text queries, k={K}")
    truth = {"image": exact_topk(image_q, base, K), "text": exact_topk(text_q, base, K)}
    sample = base[rng.permutation(n)[:min(n, 20_000)]]  # plan-index's default sample
    t0 = time.perf_counter()
    plan = plan_index(sample, sample, np.arange(min(500, len(sample))), text_q[:200], lambda q: q,
                      rerank_factor=RERANK, corpus_rows=n)
    print(f"plan (faiss, {len(sample):,}-row sample, {time.perf_counter() - t0:.0f} s): m={plan.params['m']} "
          f"nlist={plan.params['nlist']} nprobe={plan.search_params['nprobe']} met={plan.met}")

    work = Path(tempfile.mkdtemp(prefix="pixlake-scale-"))
    server = MilvusServer()
    server.set_base_dir(str(work / "milvus"))
    server.config.set("common.session.ttl", 5)
    server.start()
    try:
        client = MilvusClient(f"http://127.0.0.1:{server.listen_port}")
        rows = []
        for label, index, sp in (
            ("FLAT (exact)", {"index_type": "FLAT", "params": {}}, {}),
            (f"IVF_PQ m={plan.params['m']}", {"index_type": "IVF_PQ", "params": plan.params}, plan.search_params),
        ):
            name = "flat" if index["index_type"] == "FLAT" else "ivfpq"
            build = load(client, name, base, index)
            r = {q: {"plain": recall(search(client, name, qs, sp, base, False), truth[q]),
                     "reranked": recall(search(client, name, qs, sp, base, True), truth[q])}
                 for q, qs in (("image", image_q), ("text", text_q))}
            q1 = qps(client, name, image_q, sp, 1, qps_seconds)
            q16 = qps(client, name, image_q, sp, 16, qps_seconds)
            bpv = 4 * DIM if index["index_type"] == "FLAT" else plan.params["m"]
            rows.append((label, bpv, r, q1, q16, build))
        print("| index | bytes/vector | recall@10 image (re-ranked) | recall@10 text (re-ranked) | QPS c=1 | QPS c=16 | load+build s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, bpv, r, q1, q16, build in rows:
            print(f"| {label} | {bpv} | {r['image']['plain']:.3f} ({r['image']['reranked']:.3f}) | "
                  f"{r['text']['plain']:.3f} ({r['text']['reranked']:.3f}) | {q1:.1f} | {q16:.1f} | {build:.0f} |")
        flat, pq = rows
        print(f"IVF_PQ vs FLAT: {flat[1] / pq[1]:.0f}x fewer index bytes/vector, QPS c=16 ratio {pq[4] / flat[4]:.2f}")
    finally:
        server.stop()


# --- part 2: the embed job ---------------------------------------------------------------------


def job_part(sizes: list[int]) -> None:
    from pixlake.platform.corpus import MANIFEST, write_corpus
    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="pixlake-scale-job-"))
    os.environ.pop("RAY_ADDRESS", None)
    print(f"\n== embed job wall time (pixlake-tiny, milvus-lite, encrypted), sizes {sizes}")
    write_corpus(work / "c", max(sizes), seed=3, holdout=1.0)
    import pyarrow.parquet as pq

    manifest = pq.read_table(work / "c" / MANIFEST)
    times = []
    for n in sizes:
        pq.write_table(manifest.slice(0, n), work / "c" / f"m{n}.parquet")
        settings = load_settings(overrides={"store": {"db": str(work / f"j{n}.db")},
                                            "encoder": {"model": "pixlake-tiny", "pretrained": "none"},
                                            "governance": {"key_dir": str(work / "keys")}})
        report = run_embed_job(str(work / "c" / f"m{n}.parquet"), settings)
        times.append(report.seconds)
        print(f"{n:>8} images  {report.seconds:8.1f} s  {report.images_per_s:7.1f} images/s")
    if len(sizes) >= 2:
        b, a = np.polyfit(np.array(sizes, float), np.array(times), 1)
        print(f"fit: t = {a:.1f} s + {b * 1000:.2f} ms x n  (100M images on this machine: {(a + b * 1e8) / 3600:.0f} h)")
    stage_shares(work / "c", manifest.slice(0, 512).to_pylist())


def stage_shares(root: Path, rows: list[dict]) -> None:
    """Per-image CPU ms of each stage, timed alone on the same 512 images."""
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.governance.cipher import VectorCipher
    from pixlake.platform.governance.service import protect_rows
    from pixlake.platform.images import DecodeLimits, decode_image
    from pixlake.platform.store import MilvusStore

    enc = load_encoder("pixlake-tiny", "none", device="cpu")
    timings = {}
    t = time.perf_counter()
    data = [(root / r["path"]).read_bytes() for r in rows]
    timings["read"] = time.perf_counter() - t
    t = time.perf_counter()
    tf = enc.preprocess.pil_transform()
    pixels = np.stack([np.asarray(tf(decode_image(d, DecodeLimits()))) for d in data])
    timings["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    vectors = enc.embed_pixels(pixels)
    timings["embed"] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    records = [{"id": f"{i:032x}", "tenant": "t", "subject": f"{i:032x}", "content_hash": f"{i:064x}",
                "source": str(root / r["path"]), "model": "m", "meta": {"label": r["label"]}, "nonce": "", "key_id": "",
                "vector": v} for i, (r, v) in enumerate(zip(rows, vectors))]
    keys = {r["subject"]: (f"k{i}", rng.bytes(32)) for i, r in enumerate(records)}
    t = time.perf_counter()
    protected = protect_rows(records, 1, VectorCipher(rng.bytes(32), vectors.shape[1]), keys, ())
    timings["protect"] = time.perf_counter() - t
    store = MilvusStore(str(Path(tempfile.mkdtemp()) / "w.db"), "w")
    try:
        store.ensure_collection(vectors.shape[1], "m")
        t = time.perf_counter()
        store.insert_missing(protected, "m")
        timings["write"] = time.perf_counter() - t
    finally:
        store.close()
    total = sum(timings.values())
    print("stage shares of per-image CPU time (512 images, each stage alone): " +
          ", ".join(f"{k} {1000 * v / len(rows):.2f} ms ({100 * v / total:.0f}%)" for k, v in timings.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--qps-seconds", type=float, default=10.0)
    parser.add_argument("--images", default="1000,10000,100000")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-job", action="store_true")
    args = parser.parse_args()
    if not args.skip_index:
        index_part(args.vectors, args.queries, args.qps_seconds)
    if not args.skip_job:
        job_part([int(x) for x in args.images.split(",")])


if __name__ == "__main__":
    main()
