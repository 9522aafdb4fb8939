"""The whole platform on one machine: ``python -m pixlake.jobs.demo`` (what ``make demo`` runs).

1. writes a captioned synthetic corpus the demo model never saw (a different seed);
2. embeds it with the Ray embed job into milvus-lite;
3. evaluates search quality through the store (recall@k, precision@k);
4. starts the Ray Serve app on loopback and runs text, image and text+image queries over HTTP;
5. erases the data subject of the query image over HTTP and shows its receipt and that its
   images are gone from search;
6. shuts everything down and prints the evaluation table (also ``OUT/evaluation.json``).
"""

from __future__ import annotations

import argparse
import base64
import socket
import sys
import time
from pathlib import Path

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import emit

DEMO_KEY = "demo-key"
TEXT_QUERIES = ("show me a red star", "find the blue circles", "i am looking for a yellow triangle on a black background")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the demo."""
    parser.add_argument("--data", type=Path, default=Path("demo-data"), help="corpus directory (default demo-data)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="reports directory (default demo-output)")
    parser.add_argument("--db", default="./pixlake.db", help="milvus-lite path (default ./pixlake.db)")
    parser.add_argument("--n", type=int, default=1000, help="corpus size (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1; the demo model trained on seed 0)")
    parser.add_argument("--model", default="pixlake-demo", help="open_clip model (default pixlake-demo)")
    parser.add_argument("--pretrained", default="bundled", help="weights (default: the bundled demo model)")


class DemoConfig(JobConfig):
    """Where the corpus, the reports and the database go; the corpus and the model."""

    data: Path = Path("demo-data")
    out: Path = Path("demo-output")
    db: str = "./pixlake.db"
    n: int = 1000
    seed: int = 1
    model: str = "pixlake-demo"
    pretrained: str = "bundled"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _show(title: str, response) -> None:
    import requests  # noqa: F401  (response is a requests.Response)

    emit(f"\n-- {title}  [HTTP {response.status_code}]")
    body = response.json()
    if response.status_code != 200:
        emit(f"   {body}")
        return
    for rank, hit in enumerate(body["results"], 1):
        meta = hit["meta"]
        what = f"{meta.get('count', '')} {meta.get('size', '')} {meta.get('texture', '')} {meta.get('label', '')}"
        emit(f"   {rank}. {hit['score']:.3f}  {Path(hit['source']).name}  {' '.join(what.split())}"
             f" on {meta.get('background', '?')}")
    emit(f"   ({body['took_ms']:.0f} ms, model {body['model']})")


def _http_queries(url: str, image: Path) -> None:
    import requests

    auth = {"Authorization": f"Bearer {DEMO_KEY}"}
    for text in TEXT_QUERIES:
        _show(f'text -> image: "{text}"', requests.post(f"{url}/v1/search", json={"text": text, "k": 5}, headers=auth, timeout=60))
    with open(image, "rb") as f:
        upload = requests.post(f"{url}/v1/search/image", files={"file": (image.name, f, "image/png")}, data={"k": "5"},
                               headers=auth, timeout=60)
    _show(f"image -> image: {image.name} (it should find itself first, then look-alikes)", upload)
    mixed = {"text": "a green square", "image": base64.b64encode(image.read_bytes()).decode(),
             "weights": {"text": 0.5, "image": 0.5}, "k": 5}
    _show(f'text + image: "a green square" + {image.name}', requests.post(f"{url}/v1/search", json=mixed, headers=auth, timeout=60))
    _show("a bad key is refused", requests.post(f"{url}/v1/search", json={"text": "x"}, headers={"Authorization": "Bearer nope"}, timeout=60))


def _erasure(url: str, image: Path, subject: str) -> None:
    """Erase the query image's subject over HTTP, print the receipt, search again."""
    import requests

    auth = {"Authorization": f"Bearer {DEMO_KEY}"}
    accepted = requests.post(f"{url}/v1/erasures", json={"subject": subject}, headers=auth, timeout=60)
    emit(f"\n-- erase subject {subject!r}  [HTTP {accepted.status_code}] {accepted.json()}")
    erasure_id, deadline = accepted.json()["erasure_id"], time.monotonic() + 120
    while (receipt := requests.get(f"{url}/v1/erasures/{erasure_id}", headers=auth, timeout=60).json())["status"] == "in_progress":
        if time.monotonic() > deadline:
            break
        time.sleep(0.3)
    emit(f"   receipt: {receipt['status']}, verified {receipt['verified']}, subject pseudonym {receipt['subject'][:12]}…")
    for step in receipt["steps"]:
        emit(f"     {step['name']:<14} {step['status']:<14} {step['count']:>4}")
    with open(image, "rb") as f:
        again = requests.post(f"{url}/v1/search/image", files={"file": (image.name, f, "image/png")}, data={"k": "5"},
                              headers=auth, timeout=60)
    _show(f"image -> image again: {image.name} (its subject is erased: it must not come back)", again)


def run(config: DemoConfig) -> int:
    """Run the demo; returns the exit code."""
    import pyarrow.parquet as pq
    import ray

    from pixlake.jobs.console import progress_display
    from pixlake.platform.corpus import MANIFEST, write_corpus
    from pixlake.platform.evaluation import evaluate, save
    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings
    from pixlake.serve import run as serve_run
    from pixlake.serve.auth import parse_api_keys
    from pixlake.serve.config import ServeSettings

    started = time.monotonic()
    settings = load_settings(overrides={"store": {"db": config.db, "collection": "images"},
                                        "encoder": {"model": config.model, "pretrained": config.pretrained}})
    emit(f"== 1. corpus: {config.n} captioned synthetic images (seed {config.seed}) -> {config.data}")
    images = write_corpus(config.data, config.n, seed=config.seed, holdout=1.0)  # all unseen by the model: all holdout
    manifest = config.data / MANIFEST

    emit(f"\n== 2. Ray embed job: {manifest} -> {config.db} with {config.model} ({config.pretrained})")
    with progress_display() as progress:
        report = run_embed_job(str(manifest), settings.model_copy(update={"job": settings.job.model_copy(
            update={"report": config.out / "embed-report.json"})}), progress=progress)
    emit(report.summary())

    emit("\n== 3. evaluation through the store (held-out query phrasings; same-label image neighbours)")
    result = evaluate(str(manifest), settings)
    table = save(result, config.out / "evaluation.json", config.out / "evaluation.md")
    emit(table)

    emit("\n== 4. Ray Serve HTTP API on loopback")
    serve = ServeSettings(db=config.db, collection="images", model=config.model, pretrained=config.pretrained,
                          keys=parse_api_keys(f"{DEMO_KEY}:default:search+embed+erase"))
    try:
        url = serve_run.start(serve, "127.0.0.1", _free_port())
        emit(f"serving at {url} (OpenAPI at {url}/docs)")
        _http_queries(url, images[0])
        emit("\n== 5. GDPR erasure over HTTP")
        _erasure(url, images[0], pq.read_table(manifest, columns=["subject"]).column(0)[0].as_py())
    finally:
        serve_run.stop()
        ray.shutdown()

    emit(f"\n== 6. done in {time.monotonic() - started:.0f} s; shut down. Search quality of {config.model} "
         f"on {result['rows']} unseen images ({config.out / 'evaluation.json'}):\n\n{table}")
    return 0


JOB = Job("demo", "the whole platform on one machine", __spec__.name, add_flags, DemoConfig.of, run, verbose=True)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
