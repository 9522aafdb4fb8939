"""How cost grows toward 100M images: the index on a real Milvus server, and the embed job.

Part 1 (``--vectors N``, default 1M): N synthetic CLIP-like 512-d vectors go into the embedded
Milvus server twice in one run: a FLAT (exact) collection and an IVF_PQ collection built from
``pixlake.platform.index_plan.plan_index`` trained on ``--plan-sample`` rows (20k, as plan-index)
and measured on all N (code sizes m <= 64 only, the target being <= 64 index bytes/vector; no
OPQ, which Milvus's IVF_PQ lacks; the plan's text queries are not the measured ones). The plan
measured on the sample alone, as plan-index does, is printed beside it: recall falls as the
corpus gets denser, so that one overstates what the index delivers at N. Printed beside each other: index
bytes/vector, recall@10 against exact search (image and text queries, with and without the
store's re-rank of rerank_factor × k candidates read back from Milvus), QPS and p50/p99
latency at concurrency 1 and 16, insert+flush, index build and load seconds, and the
server's RSS with that collection loaded, before and after the re-rank's reads (one
collection is loaded at a time; Milvus 2.3 reads an IVF_PQ segment's raw vectors in on
demand for ``output_fields``, so the re-rank costs raw-vector memory, not just the codes).
Milvus builds IVF_PQ per sealed segment and merges per-segment top-k; measured at 1M
(4 segments), that costs recall against one index over all rows (the plan's faiss model).

The data (``--data lowrank``, the default). Real CLIP embeddings are not isotropic: their
covariance spectrum decays (a few dozen principal directions carry most of the variance),
they sit in a cone around a per-modality mean (two unrelated images have a cosine well
above 0), and text embeddings sit around another mean (the "modality gap"). So topic centres
and within-topic variation are drawn from one power-law spectrum (variance of the i-th
direction ∝ 1/i) in a random orthonormal basis (variance not aligned with PQ's sub-vectors),
plus a modality mean, then normalised; text queries vary 4/3 as much around their topic. The
earlier generator (``--data isotropic``: isotropic noise as large as the centre) spreads
variance evenly over all 512 directions, so a query's 1st and 100th neighbours are nearly
equally close (cosine 0.61 vs 0.55 measured at 20k) and only m=128 kept recall — a worst case
for any quantiser, not what embeddings look like. The parameters are not fitted to real CLIP
embeddings (no weights on these machines); the bench prints the data's measured statistics
(mean cosines, neighbour cosines, variance share of the top principal directions) so a
reader can hold them against real ones.

The server: segments fill to ``dataCoord.segment.maxSize`` (512 MB, ~260k rows) before they
seal (``sealProportion`` 1.0 instead of 0.23), the size compaction would leave them at, so
IVF_PQ (training included) is built once per 260k rows rather than per 60k; the index is
created after the one flush, on a collection not loaded while rows stream in (no interim
indexes). The server is stopped on exit, SIGINT, SIGTERM and SIGHUP, and dies with this
process even on SIGKILL (PR_SET_PDEATHSIG).

Part 2 (``--images 1000,10000,100000``): the embed job's wall time at each size (tiny
model, milvus-lite; with ``--job-backend server`` the Milvus server, once through one store
actor and once writing from the tasks), a least-squares fit t = a + b·n, and the share of per-image CPU time
in read / decode / embed / protect / write, each stage timed alone in this process.

Usage: ``python bench/scale.py [--vectors 1000000] [--data lowrank|isotropic] [--plan-sample 20000] [--images 1000,10000,100000] [--skip-index] [--skip-job] [--job-backend lite|server] [--uri URI]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from clip_like import DIM, Isotropic, LowRank, describe_data, vectors  # noqa: E402
from embedded_milvus import milvus_uri, rss_mib  # noqa: E402

from pixlake.platform.index_plan import exact_topk, recall  # noqa: E402

K = 10
PLAN_MS = (8, 16, 32, 64)  # the target: index memory <= 64 bytes/vector, so m <= 64 at 8-bit codes
SEGMENT_ROWS = 240_000  # the server's sealed segments of this bare (id, vector) collection at 1M (pixlake's hold ~150k)


# --- part 1: the index on a Milvus server ----------------------------------------------------


def load(client, name: str, vectors: np.ndarray, index: dict, batch: int, timeout: float) -> dict:
    """Create a minimal collection (int id, vector), insert, flush, build the index, load it.

    The collection is created without an index, so it is not loaded while rows stream in
    (no interim indexes on growing segments); the index is built on the sealed segments
    after the one flush. Returns the seconds of each step."""
    from pymilvus import DataType, MilvusClient

    t = {}
    started = time.perf_counter()
    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
    client.create_collection(name, schema=schema)
    for s in range(0, len(vectors), batch):
        rows = vectors[s:s + batch].tolist()
        client.insert(name, [{"id": s + i, "vector": v} for i, v in enumerate(rows)])
    t["insert"] = time.perf_counter() - started
    mark = time.perf_counter()
    client.flush(name)
    t["flush"] = time.perf_counter() - mark
    mark = time.perf_counter()
    params = client.prepare_index_params()
    params.add_index(field_name="vector", metric_type="COSINE", **index)
    client.create_index(name, params, sync=False)  # wait below, with progress
    last = mark
    while True:
        d = client.describe_index(name, "vector")
        if d.get("state") == "Failed":
            raise RuntimeError(f"index build failed: {d}")
        if d.get("pending_index_rows", 0) == 0 and d.get("indexed_rows", 0) >= len(vectors):
            break
        now = time.perf_counter()
        if now - mark > timeout:
            raise TimeoutError(f"index not built after {timeout:.0f} s: {d}")
        if now - last >= 60:
            print(f"  {name}: {now - mark:.0f} s building, {d.get('indexed_rows')} of {len(vectors)} rows indexed", flush=True)
            last = now
        time.sleep(1)
    t["build"] = time.perf_counter() - mark
    mark = time.perf_counter()
    client.load_collection(name)
    t["load"] = time.perf_counter() - mark
    t["total"] = time.perf_counter() - started
    return t


def search(client, name: str, queries: np.ndarray, search_params: dict, rerank: int = 0) -> list[list[int]]:
    """Top-k ids; with ``rerank`` (a factor), rerank×k candidates re-ranked exactly with their stored vectors."""
    limit = K * rerank if rerank else K
    out = []
    for s in range(0, len(queries), 50):
        qs = queries[s:s + 50]
        res = client.search(name, data=qs.tolist(), limit=limit, search_params={"metric_type": "COSINE", "params": search_params},
                            output_fields=["vector"] if rerank else [])
        for q, hits in zip(qs, res):
            if rerank:
                vecs = np.array([h["entity"]["vector"] for h in hits], np.float32)
                order = np.argsort(-(vecs @ q))
                out.append([hits[i]["id"] for i in order[:K]])
            else:
                out.append([h["id"] for h in hits])
    return out


def qps(client, name: str, queries: np.ndarray, search_params: dict, concurrency: int, seconds: float,
        rerank: int = 0) -> tuple[float, float, float]:
    """Single-query searches from ``concurrency`` threads for ``seconds``: (queries/s, p50 ms, p99 ms).
    Top-k ids alone, or with ``rerank`` the store's query: rerank×k candidates with their full
    vectors read back, re-ranked exactly."""
    deadline = time.perf_counter() + seconds

    def worker(offset: int) -> list[float]:
        lat = []
        while time.perf_counter() < deadline:
            q = queries[(offset + len(lat)) % len(queries)]
            t = time.perf_counter()
            if rerank:
                search(client, name, q[None], search_params, rerank)
            else:
                client.search(name, data=[q.tolist()], limit=K, search_params={"metric_type": "COSINE", "params": search_params})
            lat.append(time.perf_counter() - t)
        return lat

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = [x for part in pool.map(worker, range(0, concurrency * 37, 37)) for x in part]
    elapsed = time.perf_counter() - started
    return len(lat) / elapsed, 1000 * float(np.percentile(lat, 50)), 1000 * float(np.percentile(lat, 99))


def index_part(n: int, queries_n: int, qps_seconds: float, data: str, plan_sample: int, batch: int, build_timeout: float,
               alpha: float = 1.0, spread: float = 0.7, uri: Optional[str] = None) -> None:
    from pymilvus import MilvusClient

    from pixlake.platform.index_plan import plan_index, plan_summary

    t0 = time.perf_counter()
    gen = LowRank(max(100, n // 500), alpha, spread) if data == "lowrank" else Isotropic(max(100, n // 500))
    base = vectors(gen, n)
    image_q, text_q = gen.sample(queries_n, 999), gen.sample(queries_n, 998, "text")
    print(f"== index on a Milvus server: {n:,} {data}{f' (alpha {alpha}, spread {spread})' if data == 'lowrank' else ''} {DIM}-d vectors (generated in {time.perf_counter() - t0:.0f} s), "
          f"{queries_n} image and {queries_n} text queries, k={K}", flush=True)
    t0 = time.perf_counter()
    truth, scores = {}, {}
    for q, qs in (("image", image_q), ("text", text_q)):
        truth[q], scores[q] = exact_topk(qs, base, 100)
    print(f"exact top-100 in numpy: {time.perf_counter() - t0:.0f} s", flush=True)
    print(describe_data(base, scores, text_q), flush=True)

    # Two plans, both trained on ``plan_sample`` rows per segment (the generator is i.i.d.,
    # so they are a random sample), text queries separate from the measured ones, m <= 64
    # (the target is <= 64 index bytes/vector), no OPQ (Milvus's IVF_PQ has no rotation):
    # - measured on the training sample alone, one segment;
    # - the one the server gets: measured on all N rows, one index per server segment
    #   (SEGMENT_ROWS, as the server seals them), re-rank factors 5..40 (plan-index's way).
    plan_text = gen.sample(200, 997, "text")
    plans = {}
    for label, rows in (("sample only", min(n, plan_sample)), ("all rows", n)):
        if label == "all rows" and rows == plans["sample only"][0].rows_sampled:
            plans[label] = plans["sample only"]
            continue
        t0 = time.perf_counter()
        plan = plan_index(base[:rows], base[:rows], np.arange(min(500, rows)), plan_text, lambda q: q,
                          corpus_rows=n, ms=PLAN_MS, opq=False, train_rows=plan_sample, segment_rows=SEGMENT_ROWS)
        plans[label] = (plan, time.perf_counter() - t0)
        print(f"plan ({label}: faiss, trained on {min(n, plan_sample):,} rows per segment, {plans[label][1]:.0f} s)\n"
              + plan_summary(plan, Path("(not saved)")), flush=True)
    plan = plans["all rows"][0]

    work = Path(tempfile.mkdtemp(prefix="pixlake-scale-"))
    # Segments fill to dataCoord.segment.maxSize (512 MB, ~260k rows here) before sealing,
    # as compaction would leave them, instead of sealing at 23% (~60k rows) and building
    # IVF_PQ (training included) once per small segment.
    with milvus_uri(uri, work / "milvus", {"dataCoord.segment.sealProportion": 1.0}) as (server_uri, pid):
        client = MilvusClient(server_uri)
        print(f"milvus server RSS before any collection: {rss_mib(pid):.0f} MiB", flush=True)
        rows = []
        for label, index, sp, factor in (
            ("FLAT (exact)", {"index_type": "FLAT", "params": {}}, {}, 1),
            (f"IVF_PQ m={plan.params['m']} nlist={plan.params['nlist']} nprobe={plan.search_params['nprobe']} "
             f"re-rank x{plan.rerank_factor}", {"index_type": "IVF_PQ", "params": plan.params}, plan.search_params,
             plan.rerank_factor),
        ):
            name = "flat" if index["index_type"] == "FLAT" else "ivfpq"
            t = load(client, name, base, index, batch, build_timeout)
            rss = rss_mib(pid)
            print(f"{label}: insert {t['insert']:.0f} s, flush {t['flush']:.0f} s, index build {t['build']:.0f} s, "
                  f"load {t['load']:.0f} s; server RSS {rss:.0f} MiB; segments "
                  f"{sorted(seg.num_rows for seg in client.list_loaded_segments(name))}", flush=True)
            r = {q: {"plain": recall(search(client, name, qs, sp), truth[q][:, :K]),
                     "reranked": recall(search(client, name, qs, sp, factor), truth[q][:, :K])}
                 for q, qs in (("image", image_q), ("text", text_q))}
            rss = (rss, rss_mib(pid))  # the re-rank's reads pull raw vectors in (IVF_PQ holds only codes)
            # QPS of the top-k alone, and of the query pixlake runs (FLAT needs no re-rank: it is exact)
            q1, q16 = (qps(client, name, image_q, sp, c, qps_seconds) for c in (1, 16))
            f1, f16 = (qps(client, name, image_q, sp, c, qps_seconds, factor if factor > 1 else 0) for c in (1, 16))
            bpv = 4 * DIM if index["index_type"] == "FLAT" else plan.params["m"]
            rows.append((label, bpv, r, q1, q16, f1, f16, t, rss))
            print(f"{label}: measured", flush=True)
            client.drop_collection(name)  # one collection in memory at a time
        print("| index | index bytes/vector | recall@10 image (re-ranked) | recall@10 text (re-ranked) | QPS top-k c=1 "
              "(p50/p99 ms) | QPS top-k c=16 | QPS with re-rank read c=1 | c=16 | insert+flush s | build s | load s "
              "| server RSS MiB after load / after re-rank reads |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        fmt = lambda q: f"{q[0]:.1f} ({q[1]:.1f}/{q[2]:.1f})"  # noqa: E731
        for label, bpv, r, q1, q16, f1, f16, t, rss in rows:
            print(f"| {label} | {bpv} | {r['image']['plain']:.3f} ({r['image']['reranked']:.3f}) | "
                  f"{r['text']['plain']:.3f} ({r['text']['reranked']:.3f}) | {fmt(q1)} | {fmt(q16)} | {fmt(f1)} | {fmt(f16)} | "
                  f"{t['insert'] + t['flush']:.0f} | {t['build']:.0f} | {t['load']:.0f} | {rss[0]:.0f} / {rss[1]:.0f} |")
        flat, pq = rows
        print(f"IVF_PQ vs FLAT: {flat[1] / pq[1]:.0f}x fewer index bytes/vector; QPS ratio top-k c=1 {pq[3][0] / flat[3][0]:.2f}, "
              f"c=16 {pq[4][0] / flat[4][0]:.2f}; as queried (IVF_PQ with its re-rank read, FLAT alone) c=1 "
              f"{pq[5][0] / flat[5][0]:.2f}, c=16 {pq[6][0] / flat[6][0]:.2f}", flush=True)


# --- part 2: the embed job ---------------------------------------------------------------------


def job_part(sizes: list[int], backend: str = "lite", uri: Optional[str] = None) -> None:
    from pixlake.platform.corpus import MANIFEST, write_corpus
    from pixlake.platform.governance.keys import load_master_key
    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="pixlake-scale-job-"))
    os.environ.pop("RAY_ADDRESS", None)
    where = "milvus-lite" if backend == "lite" else "the Milvus server, through one store actor and from the tasks"
    print(f"\n== embed job wall time (pixlake-tiny, {where}, encrypted), sizes {sizes}")
    load_master_key(work / "keys", create=True)  # a server deployment never creates one itself
    write_corpus(work / "c", max(sizes), seed=3, holdout=1.0)
    import pyarrow.parquet as pq

    manifest = pq.read_table(work / "c" / MANIFEST)
    for n in sizes:
        pq.write_table(manifest.slice(0, n), work / "c" / f"m{n}.parquet")
    server = milvus_uri(uri, work / "milvus", {}) if backend == "server" else contextlib.nullcontext((None, None))
    with server as (server_uri, _):
        for store_actor in ([True] if backend == "lite" else [True, False]):
            path = "store actor" if store_actor else "tasks write"
            times = []
            for n in sizes:
                db = str(work / f"j{n}.db") if backend == "lite" else server_uri
                settings = load_settings(overrides={
                    "store": {"db": db, "collection": f"job{n}_{'actor' if store_actor else 'tasks'}"},
                    "encoder": {"model": "pixlake-tiny", "pretrained": "none"},
                    "job": {"store_actor": store_actor},
                    "governance": {"key_dir": str(work / "keys")}})
                report = run_embed_job(str(work / "c" / f"m{n}.parquet"), settings)
                times.append(report.seconds)
                print(f"[{path}] {n:>8} images  {report.seconds:8.1f} s  {report.images_per_s:7.1f} images/s", flush=True)
            if len(sizes) >= 2:
                b, a = np.polyfit(np.array(sizes, float), np.array(times), 1)
                print(f"[{path}] fit: t = {a:.1f} s + {b * 1000:.2f} ms x n  "
                      f"(100M images on this machine: {(a + b * 1e8) / 3600:.0f} h)", flush=True)
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


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--qps-seconds", type=float, default=10.0)
    parser.add_argument("--data", choices=("lowrank", "isotropic"), default="lowrank")
    parser.add_argument("--alpha", type=float, default=1.0, help="lowrank: variance of the i-th direction ~ i^-alpha")
    parser.add_argument("--spread", type=float, default=0.7, help="lowrank: within-topic spread relative to the topic spread")
    parser.add_argument("--plan-sample", type=int, default=20_000, help="rows the plans train on; the sample-only plan also measures on them (plan-index default)")
    parser.add_argument("--batch", type=int, default=20_000, help="rows per insert call")
    parser.add_argument("--build-timeout", type=float, default=2400.0, help="seconds to wait for an index build")
    parser.add_argument("--images", default="1000,10000,100000")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--job-backend", choices=("lite", "server"), default="lite",
                        help="the job's store: milvus-lite, or the Milvus server (the job then runs through one "
                             "store actor and from its tasks, side by side)")
    parser.add_argument("--uri", help="a running Milvus server instead of starting the embedded one (its segment "
                                      "settings are its own, and its memory is not reported)")
    args = parser.parse_args(argv)
    if not args.skip_index:
        index_part(args.vectors, args.queries, args.qps_seconds, args.data, args.plan_sample, args.batch, args.build_timeout,
                   args.alpha, args.spread, args.uri)
    if not args.skip_job:
        job_part([int(x) for x in args.images.split(",")], args.job_backend, args.uri)


if __name__ == "__main__":
    main()
