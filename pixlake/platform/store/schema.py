"""The Milvus schema of pixlake records (:mod:`pixlake.platform.records`), created once per
collection, and the check that an existing collection fits an encoder."""

from __future__ import annotations

from typing import Any

from pixlake.platform import records as R
from pixlake.platform.errors import StoreError
from pixlake.platform.store.filters import literal
from pixlake.platform.store.index import METRIC, IndexChoice


def create_collection(client: Any, name: str, dim: int, index: IndexChoice, partition_by_tenant: bool) -> None:
    """Create and load collection ``name`` for ``dim``-d vectors indexed as ``index``.

    Args:
        client: a ``pymilvus.MilvusClient``.
        partition_by_tenant: make the tenant the partition key (a server keeps one
            tenant's search inside its own partitions).
    """
    from pymilvus import DataType, MilvusClient

    # The description records the index and its search parameters, so every later
    # opener searches the collection as it was built, plan file or not.
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=index.description())
    schema.add_field(R.ID, DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field(R.TENANT, DataType.VARCHAR, max_length=256, is_partition_key=partition_by_tenant)
    schema.add_field(R.SUBJECT, DataType.VARCHAR, max_length=64)
    schema.add_field(R.CONTENT_HASH, DataType.VARCHAR, max_length=64)
    schema.add_field(R.SOURCE, DataType.VARCHAR, max_length=4096)
    schema.add_field(R.MODEL, DataType.VARCHAR, max_length=128)
    schema.add_field(R.META, DataType.JSON)
    schema.add_field(R.NONCE, DataType.VARCHAR, max_length=64)
    schema.add_field(R.KEY_ID, DataType.VARCHAR, max_length=64)
    schema.add_field(R.VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    index_params = client.prepare_index_params()
    index_params.add_index(field_name=R.VECTOR, index_type=index.index_type, metric_type=METRIC, params=index.params)
    client.create_collection(name, schema=schema, index_params=index_params)
    client.load_collection(name)


def check_compatible(client: Any, name: str, dim: int, model: str) -> None:
    """Refuse an existing collection that holds another dimension or another encoder's rows.

    Raises:
        StoreError: it does.
    """
    fields = client.describe_collection(name)["fields"]
    have_dim = next((int(f["params"]["dim"]) for f in fields if f["name"] == R.VECTOR), None)
    if have_dim != dim:
        raise StoreError(f"collection {name} holds {have_dim}-d vectors, the encoder makes {dim}-d")
    other = client.query(name, filter=f"{R.MODEL} != {literal(model)}", output_fields=[R.MODEL], limit=1,
                         consistency_level="Strong")
    if other:
        raise StoreError(
            f"collection {name} holds embeddings of {other[0][R.MODEL]}, not {model}; "
            "use another --collection for a new encoder"
        )


def is_pixlake_collection(client: Any, name: str) -> bool:
    """Whether collection ``name`` has the record schema (other collections may share the database)."""
    fields = {f["name"] for f in client.describe_collection(name)["fields"]}
    return {R.SUBJECT, R.KEY_ID, R.VECTOR} <= fields
