"""pixlake: distributed batch image embedding into governed, searchable Milvus collections."""

__version__ = "0.1.0"
