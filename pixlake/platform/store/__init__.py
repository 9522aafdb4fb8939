"""The Milvus store: one collection of pixlake records, milvus-lite to a cluster.

Modules: :mod:`~pixlake.platform.store.filters` (the filter language),
:mod:`~pixlake.platform.store.client` (the :class:`MilvusStore` facade).
Every name other code imports from ``pixlake.platform.store`` is re-exported here.
"""

from pixlake.platform.store.client import (
    DEFAULT_RETRY_DEADLINE_S,
    FAULT_ENV,
    LITE,
    MAX_TOPK,
    METRIC,
    SERVER,
    IndexChoice,
    MilvusStore,
    backend_of,
    check_db_location,
    choose_index,
    transient,
)
from pixlake.platform.store.filters import (
    MAX_FILTER_KEYS,
    MAX_FILTER_STRING,
    MAX_FILTER_VALUES,
    build_filter,
    literal,
)

__all__ = [
    "DEFAULT_RETRY_DEADLINE_S", "FAULT_ENV", "LITE", "MAX_FILTER_KEYS", "MAX_FILTER_STRING", "MAX_FILTER_VALUES",
    "MAX_TOPK", "METRIC", "SERVER", "IndexChoice", "MilvusStore", "backend_of", "build_filter", "check_db_location",
    "choose_index", "literal", "transient",
]
