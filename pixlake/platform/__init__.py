"""The core library: settings, safe image decoding, encoders, the Milvus store, pipeline stages.

Nothing here imports from ``pixlake.jobs`` or ``pixlake.serve``.
"""
