"""The Milvus store: one collection of pixlake records, milvus-lite to a cluster.

- :mod:`.client`: :class:`MilvusStore`, the facade (its docstring lists the interface);
  :mod:`.admin`: the database around its collection (other collections, aliases, compaction);
- :mod:`.filters`: the filter language (:func:`build_filter`, :func:`literal`), pure functions;
- :mod:`.index`: which vector index a collection gets, from an index plan;
- :mod:`.schema`: the record schema of a collection;
- :mod:`.retry`: which errors retry a Milvus server that is away, and for how long;
- :mod:`.backends`: milvus-lite's file, lock and in-process server.

Every name other code imports from ``pixlake.platform.store`` is re-exported here.
"""

# LITE, SERVER, backend_of and the retry deadline are settings' (settings.py depends on nothing above it).
from pixlake.platform.settings import DEFAULT_RETRY_DEADLINE_S, LITE, SERVER, backend_of
from pixlake.platform.store.backends import check_db_location
from pixlake.platform.store.client import FAULT_ENV, MilvusStore
from pixlake.platform.store.filters import MAX_FILTER_KEYS, MAX_FILTER_STRING, MAX_FILTER_VALUES, build_filter, literal
from pixlake.platform.store.index import MAX_TOPK, METRIC, IndexChoice, choose_index
from pixlake.platform.store.retry import transient

__all__ = [
    "DEFAULT_RETRY_DEADLINE_S", "FAULT_ENV", "LITE", "MAX_FILTER_KEYS", "MAX_FILTER_STRING", "MAX_FILTER_VALUES",
    "MAX_TOPK", "METRIC", "SERVER", "IndexChoice", "MilvusStore", "backend_of", "build_filter", "check_db_location",
    "choose_index", "literal", "transient",
]
