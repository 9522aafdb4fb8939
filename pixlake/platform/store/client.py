"""Milvus facade over ``pymilvus.MilvusClient``: one API from milvus-lite to a cluster.

The interface is small on purpose (ensure / upsert / search / count / delete / close),
with argument shapes from ``MilvusClient``; delete takes ids or a filter, never both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from pixlake.platform import records as R
from pixlake.platform.errors import ConfigError, PixlakeError, StoreError
from pixlake.platform.store.filters import literal

log = logging.getLogger(__name__)

LITE, SERVER = "milvus-lite", "milvus-server"
FAULT_ENV = "PIXLAKE_FAULT_STORE"  # tests: a crash point, see _fault
METRIC = "COSINE"
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")
_LOCK_WAIT_S = 30.0
DEFAULT_RETRY_DEADLINE_S = 120.0
# Open MilvusStore objects per milvus-lite path in this process (they share one server).
_lite_users: Counter[str] = Counter()


def _fault(point: str) -> None:
    """Tests: exit the process abruptly at ``point`` when ``PIXLAKE_FAULT_STORE`` names it (a crash)."""
    if os.environ.get(FAULT_ENV) == point:
        log.error("fault injection: exiting at %s", point)
        os._exit(137)


def backend_of(uri: str) -> str:
    """Tell milvus-lite paths from server URIs.

    Raises:
        ConfigError: neither a ``.db`` path nor a server URI.
    """
    if uri.startswith(_SERVER_SCHEMES):
        return SERVER
    if uri.endswith(".db") and "://" not in uri:
        return LITE
    raise ConfigError(f"--db {uri!r}: expected a milvus-lite path ending in .db or a server URI like http://host:19530")


def check_db_location(uri: str) -> None:
    """Fail early and clearly when a milvus-lite path cannot be created or written.

    Raises:
        ConfigError: ``uri`` is neither a ``.db`` path nor a server URI.
        StoreError: the directory cannot be created or written.
    """
    if backend_of(uri) != LITE:
        return

    parent = Path(uri).expanduser().resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the directory of --db {uri}: {e.strerror or e}") from e
    if not os.access(parent, os.W_OK):
        raise StoreError(f"--db {uri}: directory {parent} is not writable")


MAX_TOPK = 16384  # Milvus refuses a search limit above this


@dataclass(frozen=True)
class IndexChoice:
    """The vector index a collection uses, and why."""

    index_type: str
    params: dict
    search_params: dict
    reason: str
    rerank_factor: Optional[int] = None  # the plan's re-rank (candidates per hit), None without a plan


def choose_index(backend: str, plan: Optional[Mapping[str, Any]] = None) -> IndexChoice:
    """Pick an index the backend really builds.

    milvus-lite accepts IVF_PQ but never builds it (search silently falls back to brute
    force), so it gets HNSW. A server builds IVF_PQ with the parameters of an index plan
    (``pixlake plan-index``: PQ measured on the corpus), and HNSW until one exists: a PQ
    code chosen blind can cost recall silently.

    Args:
        plan: a saved plan's dict (:class:`~pixlake.platform.index_plan.IndexPlan`).
    """
    hnsw = {"M": 16, "efConstruction": 200}
    if backend == LITE:
        note = "; the index plan applies on a Milvus server" if plan else ""
        return IndexChoice("HNSW", hnsw, {"ef": 128}, f"milvus-lite builds no IVF_PQ; HNSW is its best real index{note}")
    if plan:
        recall = ", ".join(f"{q} {r['reranked']:.3f}" for q, r in plan["recall"].items())
        return IndexChoice(plan["index_type"], dict(plan["params"]), dict(plan["search_params"]),
                           f"planned: {plan['bytes_per_vector']} bytes/vector, recall@{plan['k']} after re-rank "
                           f"x{plan['rerank_factor']} {recall}", plan["rerank_factor"])
    return IndexChoice("HNSW", hnsw, {"ef": 128}, "no index plan; IVF_PQ needs planned parameters (pixlake plan-index)")


# A Milvus server that is down or restarting: the client cannot connect (code 2), or the
# server is back but has not reloaded the collection yet (code 101), or gRPC gave up.
_TRANSIENT_CODES = {2, 101}
_TRANSIENT_TEXT = re.compile(r"unavailable|not ready|not loaded|fail connecting|deadline exceeded|connection refused", re.I)
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.5, 5.0


def transient(error: BaseException) -> bool:
    """Whether a Milvus client error means "server away for now" (retry) rather than "wrong call"."""
    code = getattr(error, "code", None)
    code = getattr(code, "value", code)  # a gRPC StatusCode carries (number, name)
    if isinstance(code, tuple):
        code = code[1]
    return code in _TRANSIENT_CODES or code in ("unavailable", "deadline exceeded") or bool(
        _TRANSIENT_TEXT.search(str(error)))


def _store_errors(method):
    """Surface Milvus client failures as :class:`StoreError` naming the operation, after
    retrying a Milvus server that is down or restarting with exponential backoff for up to
    the store's ``retry_deadline_s`` (every wrapped call is idempotent, so a retry after a
    lost reply writes nothing twice)."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        deadline, backoff, retried = None, _BACKOFF_FIRST_S, False
        while True:
            try:
                result = method(self, *args, **kwargs)
                if retried:
                    log.warning("%s on %s: Milvus at %s answers again", method.__name__, self.collection, self.uri)
                return result
            except PixlakeError:
                raise
            except Exception as e:
                if self.backend != SERVER or not transient(e):
                    raise StoreError(f"{method.__name__} on {self.collection} in {self.uri} failed: {e}") from e
                now = time.monotonic()
                deadline = deadline or now + self.retry_deadline_s
                if now >= deadline:
                    raise StoreError(
                        f"Milvus server at {self.uri} unreachable for {self.retry_deadline_s:g} s "
                        f"({method.__name__} on {self.collection}): {str(e).splitlines()[0][:200]}. "
                        "Rows written before are kept: run the job again once the server is back "
                        "and it writes only the rest"
                    ) from e
                if not retried:
                    log.warning("%s on %s: Milvus at %s unavailable (%s); retrying for up to %g s",
                                method.__name__, self.collection, self.uri, str(e).splitlines()[0][:120],
                                self.retry_deadline_s)
                retried = True
                self.retries += 1
                time.sleep(min(backoff, max(0.0, deadline - now)))
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    return wrapper


class MilvusStore:
    """One Milvus collection of pixlake records.

    Args:
        uri: milvus-lite path (``./pixlake.db``) or server URI (``http://host:19530``).
        collection: collection name.
        index_plan: a saved index plan (JSON path) for the collection a server creates; an
            existing collection keeps the index (and search parameters) it was built with.
        retry_deadline_s: how long a call (and opening) retries a Milvus server that is down
            or restarting before it fails; milvus-lite runs in-process and is not retried.

    Raises:
        StoreError: the database cannot be opened (unwritable path, locked, unreachable).
        ConfigError: the index plan cannot be read.
    """

    def __init__(self, uri: str, collection: str, index_plan: Optional[Path] = None,
                 retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S, search_consistency: str = "strong"):
        self.uri = uri
        self.collection = collection
        self.backend = backend_of(uri)
        self.index_plan = index_plan
        self.retry_deadline_s = retry_deadline_s
        self.search_consistency = search_consistency
        self.retries = 0  # calls retried because the server was away (the job reports them)
        plan = json.loads(Path(index_plan).read_text()) if index_plan and Path(index_plan).is_file() else None
        if index_plan and plan is None:
            raise ConfigError(f"index plan not found: {index_plan} (make one with pixlake plan-index)")
        self.index = choose_index(self.backend, plan)
        self._client = self._connect()
        self._closed = False
        if self._client.has_collection(collection):
            self._client.load_collection(collection)
            self.index = self._built_index() or self.index

    @classmethod
    def configured(cls, store: Any) -> "MilvusStore":
        """The store of :class:`~pixlake.platform.settings.StoreSettings`."""
        return cls(store.db, store.collection, store.index_plan, store.retry_deadline_s, store.search_consistency)

    def _built_index(self) -> Optional[IndexChoice]:
        """The index this collection was created with (its description carries it)."""
        try:
            saved = json.loads(self._client.describe_collection(self.collection).get("description") or "{}")
        except ValueError:
            return None
        return IndexChoice(**saved["index"]) if "index" in saved else None

    def _connect(self):
        from pymilvus import MilvusClient

        check_db_location(self.uri)
        deadline = time.monotonic() + (_LOCK_WAIT_S if self.backend == LITE else self.retry_deadline_s)
        while True:
            try:
                client = MilvusClient(self.uri)
                if self.backend == LITE:
                    _lite_users[str(Path(self.uri).expanduser().resolve())] += 1
                return client
            except Exception as e:
                # pymilvus reports milvus-lite's lock conflict only as "Open local milvus
                # failed"; the location was checked writable above, so a lock is the likely
                # cause: a previous job's store process may still be exiting.
                # A server that is down or restarting gets the same wait as any call.
                if (self.backend == LITE or transient(e)) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                hint = " (is another process, e.g. a running job, holding it open?)" if self.backend == LITE else ""
                raise StoreError(f"cannot open Milvus at {self.uri}{hint}: {e}") from e

    # --- collection -------------------------------------------------------------------

    def retry_count(self) -> int:
        """Calls retried so far because the server was down or restarting."""
        return self.retries

    @_store_errors
    def exists(self, name: Optional[str] = None) -> bool:
        """Whether the collection (or the collection or alias ``name`` of this database) exists."""
        return self._client.has_collection(name or self.collection)

    @_store_errors
    def ensure_collection(self, dim: int, model: str) -> IndexChoice:
        """Create the collection for ``model`` embeddings of ``dim``, or check the existing one matches.

        Raises:
            StoreError: the existing collection holds another dimension or another encoder.
        """
        if self.exists():
            self._check_compatible(dim, model)
            return self.index
        from pymilvus import DataType, MilvusClient

        # The description records the index and its search parameters, so every later
        # opener searches the collection as it was built, plan file or not.
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description=json.dumps({"index": dataclasses.asdict(self.index)}))
        schema.add_field(R.ID, DataType.VARCHAR, is_primary=True, max_length=64)
        # A partition key keeps one tenant's search inside its own partitions on a server.
        schema.add_field(R.TENANT, DataType.VARCHAR, max_length=256, is_partition_key=self.backend == SERVER)
        schema.add_field(R.SUBJECT, DataType.VARCHAR, max_length=64)
        schema.add_field(R.CONTENT_HASH, DataType.VARCHAR, max_length=64)
        schema.add_field(R.SOURCE, DataType.VARCHAR, max_length=4096)
        schema.add_field(R.MODEL, DataType.VARCHAR, max_length=128)
        schema.add_field(R.META, DataType.JSON)
        schema.add_field(R.NONCE, DataType.VARCHAR, max_length=64)
        schema.add_field(R.KEY_ID, DataType.VARCHAR, max_length=64)
        schema.add_field(R.VECTOR, DataType.FLOAT_VECTOR, dim=dim)
        index_params = self._client.prepare_index_params()
        index_params.add_index(
            field_name=R.VECTOR, index_type=self.index.index_type, metric_type=METRIC, params=self.index.params
        )
        self._client.create_collection(self.collection, schema=schema, index_params=index_params)
        self._client.load_collection(self.collection)
        log.info("created collection %s (%s, %s, dim %d)", self.collection, self.backend, self.index.index_type, dim)
        return self.index

    def _check_compatible(self, dim: int, model: str) -> None:
        fields = self._client.describe_collection(self.collection)["fields"]
        have_dim = next((int(f["params"]["dim"]) for f in fields if f["name"] == R.VECTOR), None)
        if have_dim != dim:
            raise StoreError(f"collection {self.collection} holds {have_dim}-d vectors, the encoder makes {dim}-d")
        other = self._client.query(
            self.collection, filter=f"{R.MODEL} != {literal(model)}", output_fields=[R.MODEL], limit=1,
            consistency_level="Strong",
        )
        if other:
            raise StoreError(
                f"collection {self.collection} holds embeddings of {other[0][R.MODEL]}, not {model}; "
                "use another --collection for a new encoder"
            )

    @_store_errors
    def model(self) -> Optional[str]:
        """Encoder fingerprint of the collection's rows, or None when it is empty or missing."""
        if not self.exists():
            return None
        rows = self._client.query(self.collection, filter="", output_fields=[R.MODEL], limit=1, consistency_level="Strong")
        return rows[0][R.MODEL] if rows else None

    def describe(self) -> dict:
        """Name, backend, row count, model fingerprint and index type of the collection."""
        index = self._client.describe_index(self.collection, R.VECTOR) if self.exists() else {}
        return {
            "collection": self.collection,
            "backend": self.backend,
            "rows": self.count() if self.exists() else 0,
            "model": self.model(),
            "index_type": index.get("index_type"),
            "index_params": self.index.params,
            "search_params": self.index.search_params,
            "rerank_factor": self.index.rerank_factor,
            "index_note": self.index.reason,
            # a server reports how much of the collection its index covers
            **{k: index[k] for k in ("indexed_rows", "pending_index_rows") if k in index},
        }

    # --- rows ---------------------------------------------------------------------------

    @_store_errors
    def upsert(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert or replace rows by id (idempotent); returns how many were written."""
        if not rows:
            return 0
        if self.backend == SERVER:
            # Milvus 2.3 upserts rows into the wrong partition of a partition-key collection
            # (milvus-io/milvus#30607), where tenant-filtered searches never see them: delete
            # and insert instead. Not atomic: a caller rewriting rows whose only copy is here
            # (re-keying) journals them first (pixlake.platform.governance.portability).
            self._client.delete(self.collection, ids=[r[R.ID] for r in rows])
            _fault("upsert.deleted")
            return int(self._client.insert(self.collection, [dict(r) for r in rows])["insert_count"])
        return int(self._client.upsert(self.collection, [dict(r) for r in rows])["upsert_count"])

    @_store_errors
    def insert_missing(self, rows: Sequence[Mapping[str, Any]], model: str) -> int:
        """Write the rows whose id is not yet stored for ``model``; returns how many were new.

        Repeats (same id twice in ``rows``, or already stored) are not written again, so
        callers can count exactly what a run added. Check and write happen in one call:
        a job routes all writes through one store actor, which makes the pair atomic.
        """
        unique = {r[R.ID]: r for r in rows}
        existing = self.existing_ids(unique, model)
        new = [dict(r) for i, r in unique.items() if i not in existing]
        if new:
            self._client.insert(self.collection, new)
        return len(new)

    @_store_errors
    def existing_ids(self, ids: Iterable[str], model: str) -> set[str]:
        """The subset of ``ids`` already stored with embeddings from ``model``."""
        ids = list(ids)
        if not ids:
            return set()
        # A primary-key lookup alone, the model compared here: with `and model == ...` in the
        # filter milvus-lite scans every row, and the lookup (twice per image in a job) grew
        # with the collection: 27 ms per 512 ids at 10k rows, 86 ms at 60k, 16 ms without.
        expr = f"{R.ID} in [{', '.join(literal(i) for i in ids)}]"
        rows = self._client.query(self.collection, filter=expr, output_fields=[R.ID, R.MODEL], consistency_level="Strong")
        return {r[R.ID] for r in rows if r[R.MODEL] == model}

    @_store_errors
    def search(
        self,
        vectors: Sequence[Sequence[float]],
        k: int = 10,
        filter: str = "",
        output_fields: Sequence[str] = (R.SOURCE, R.META),
    ) -> list[list[dict]]:
        """Nearest rows for each query vector.

        Args:
            vectors: query vectors (L2-normalised, same encoder as the collection).
            k: hits per query.
            filter: expression from :func:`build_filter` (never raw client input).
            output_fields: row fields returned beside id and score.

        Returns:
            One list per query of ``{"id", "score", <output_fields>...}``, best first.
        """
        if not self.exists():
            raise StoreError(f"collection {self.collection} does not exist in {self.uri}")
        search = dict(self.index.search_params)
        if "ef" in search:  # HNSW needs ef >= k
            search["ef"] = max(k, search["ef"])
        params = {"metric_type": METRIC, "params": search}
        res = self._client.search(
            self.collection,
            data=[list(map(float, v)) for v in vectors],
            limit=k,
            filter=filter,
            output_fields=list(output_fields),
            search_params=params,
            # Strong: read-your-writes. Bounded skips a server's wait for it; an erased subject's
            # rows are kept out by the deny-list (Governance.reveal) either way.
            consistency_level=self.search_consistency.capitalize(),
        )
        return [[{"id": h["id"], "score": float(h["distance"]), **h["entity"]} for h in hits] for hits in res]

    @_store_errors
    def query(self, filter: str, output_fields: Sequence[str]) -> list[dict]:
        """Every row matching ``filter`` (read with Strong consistency), with ``output_fields``."""
        return [row for page in self.pages(filter, output_fields) for row in page]

    def pages(self, filter: str, output_fields: Sequence[str], size: int = 1000) -> Iterator[list[dict]]:
        """Rows matching ``filter`` in pages of ``size`` (bounded memory over any collection),
        read with Strong consistency: every write acknowledged before the call is seen."""
        if not self.exists():
            return
        if self.backend == SERVER:
            # pymilvus's iterator reads a 2.3 server at a client-side timestamp without the
            # Strong wait: rows written just before were missing (0 of 50, 6 ms). A Strong
            # query first waits until the server has applied every earlier write.
            self.count(filter)
        try:
            iterator = self._client.query_iterator(self.collection, batch_size=size, filter=filter,
                                                   output_fields=list(output_fields), consistency_level="Strong")
            while page := iterator.next():
                yield page
            iterator.close()
        except PixlakeError:
            raise
        except Exception as e:
            raise StoreError(f"query on {self.collection} in {self.uri} failed: {e}") from e

    @_store_errors
    def flush(self) -> None:
        """Persist every write so far: milvus-lite moves its write-ahead log into segment
        files under an atomically committed manifest; a server seals its growing segments
        into object storage. The embed job calls this before it reports success."""
        self._client.flush(self.collection)

    @_store_errors
    def count(self, filter: str = "") -> int:
        """Rows matching ``filter`` (all rows when empty), read with Strong consistency."""
        if not self.exists():
            return 0
        res = self._client.query(
            self.collection, filter=filter, output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(res[0]["count(*)"])

    @_store_errors
    def delete(self, ids: Optional[Sequence[str]] = None, filter: Optional[str] = None) -> int:
        """Delete rows by ids or by filter (exactly one of them); returns the count deleted."""
        if (ids is None) == (filter is None):
            raise ConfigError("delete takes ids or a filter, not both and not neither")
        if ids is not None and not ids:
            return 0
        before = self.count()
        if ids is not None:
            self._client.delete(self.collection, ids=list(ids))
        else:
            if not filter:
                raise ConfigError("delete with an empty filter would erase the collection; drop it instead")
            self._client.delete(self.collection, filter=filter)
        return before - self.count()

    @_store_errors
    def collections(self) -> list[str]:
        """Every pixlake collection in this database (those with the record schema)."""
        names = []
        for name in self._client.list_collections():
            fields = {f["name"] for f in self._client.describe_collection(name)["fields"]}
            if {R.SUBJECT, R.KEY_ID, R.VECTOR} <= fields:
                names.append(name)
        return sorted(names)

    def compact(self, collections: Optional[Sequence[str]] = None, timeout: float = 120.0) -> dict[str, str]:
        """Flush and compact ``collections`` of this database (default: this one), so deleted
        rows leave the sealed segments; returns each collection's outcome: ``done``, or
        ``scheduled`` when still running at the timeout (the server finishes it on its own).

        A server compacts in the background and each job takes 10-20 s here however small
        it is, so every job is started first and all are awaited together: compacting N
        collections costs one wait, not N.

        Raises:
            StoreError: as any store call, after retrying a server that is away; an erasure
                then stops at its compact step and resumes there when run again.
        """
        names = [self.collection] if collections is None else list(collections)
        jobs = {name: self._start_compaction(name) for name in names}
        done, deadline = [], time.monotonic() + timeout
        while jobs and time.monotonic() < deadline:
            for name, job in list(jobs.items()):
                if self._compaction_completed(job):
                    done.append(name)
                    del jobs[name]
            if jobs:
                time.sleep(0.5)
        return {**{name: "done" for name in done}, **{name: "scheduled" for name in jobs}}

    @_store_errors
    def _start_compaction(self, name: str) -> int:
        self._client.flush(name)
        return self._client.compact(name)

    @_store_errors
    def _compaction_completed(self, job: int) -> bool:
        return str(self._client.get_compaction_state(job)).lower().endswith("completed")

    @_store_errors
    def wait_for_index(self, timeout: float = 300.0) -> dict:
        """Flush, then wait until a server's index covers every row (milvus-lite: at once).

        Returns:
            :meth:`describe` once ``pending_index_rows`` is 0 (or at the timeout).
        """
        if self.backend == LITE:
            return self.describe()
        self._client.flush(self.collection)
        deadline = time.monotonic() + timeout
        while True:
            d = self.describe()
            # describe_index says "Finished" while rows are still pending; count instead
            if d.get("pending_index_rows", 0) == 0 and d.get("indexed_rows", 0) >= d["rows"] or time.monotonic() > deadline:
                return d
            time.sleep(0.5)

    def for_collection(self, collection: str) -> "MilvusStore":
        """Another collection of the same database (a new store; close it when done)."""
        return MilvusStore(self.uri, collection, self.index_plan, self.retry_deadline_s, self.search_consistency)

    def each_collection(self) -> Iterator["MilvusStore"]:
        """A store for every pixlake collection of this database, this one included; the
        others are closed as the iteration moves on (erasure, export and re-key reach them all)."""
        for name in self.collections():
            other = self if name == self.collection else self.for_collection(name)
            try:
                yield other
            finally:
                if other is not self:
                    other.close()

    # --- aliases (the live name of a collection with versions: pixlake.platform.lifecycle) ---

    @_store_errors
    def alias_target(self, name: str) -> Optional[str]:
        """The collection the alias ``name`` points at, or None when ``name`` is no alias."""
        try:
            return self._client.describe_alias(name)["collection_name"]
        except Exception as e:
            # milvus-lite: code 100 "alias ... does not exist"; a 2.3 server: 1600 "alias not found"
            if getattr(e, "code", None) in (100, 1600):
                return None
            raise

    @_store_errors
    def point_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one atomic step (creating the alias if new)."""
        if self.alias_target(alias) is None:
            self._client.create_alias(collection, alias)
        else:
            self._client.alter_alias(collection, alias)

    @_store_errors
    def rename(self, old: str, new: str) -> None:
        """Rename a collection of this database (its rows, index and id stay)."""
        self._client.rename_collection(old, new)

    @_store_errors
    def drop(self) -> None:
        """Drop the collection (tests and re-creation)."""
        if self.exists():
            self._client.drop_collection(self.collection)

    def close(self) -> None:
        """Release the client and, for milvus-lite, its in-process server and file lock
        once no other store of this process uses the same database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._client.close()
        if self.backend == LITE:
            path = str(Path(self.uri).expanduser().resolve())
            _lite_users[path] -= 1
            if _lite_users[path] == 0:
                # Closing a client leaves milvus-lite's per-path server (and its lock)
                # running until the process exits; other processes then could not open it.
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(path)
