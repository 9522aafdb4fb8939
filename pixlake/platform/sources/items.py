"""Read stage: turn a SOURCE (folder, glob, Parquet, WebDataset shards; local or any
``pyarrow.fs`` URI) into a Ray dataset of items in one standard shape.

Every item has the columns of :data:`ITEM_SCHEMA`: either ``image`` holds the encoded
bytes (Parquet ``image`` column, WebDataset member) or ``path`` names where the load
stage reads them, so an unreadable file becomes a rejected row instead of a failed read.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa

from pixlake.platform.errors import SourceError
from pixlake.platform.sources.reader import IMAGE_EXTENSIONS, split_location

log = logging.getLogger(__name__)

ITEM_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # where the image came from, as shown to users
        ("path", pa.string()),  # readable location ("" when image bytes are inline)
        ("image", pa.binary()),  # inline encoded bytes (b"" when read from path)
        ("subject", pa.string()),  # raw data-subject id ("" when none)
        ("tenant", pa.string()),  # "" means the job's --tenant
        ("meta", pa.string()),  # JSON object of user metadata
    ]
)
_KNOWN_COLUMNS = {"image", "path", "subject", "tenant", "source"}
_GLOB_CHARS = "*?["
# Small blocks keep both cores busy on small corpora; large corpora get ~200 blocks per
# CPU-hour of work without flooding the object store with tiny objects.
_MIN_BLOCK_ROWS, _TARGET_BLOCKS = 64, 200


@dataclass(frozen=True)
class ResolvedSource:
    """A SOURCE resolved to a filesystem, its kind and the files it covers."""

    kind: str  # "images" | "parquet" | "webdataset"
    filesystem: Any
    files: list[str]  # filesystem paths
    prefix: str  # "" for local paths, else "scheme://" to rebuild user-facing URIs

    def uri(self, path: str) -> str:
        """User-facing location of a file of this source."""
        return f"{self.prefix}{path}"


def _filesystem(source: str):
    """Return (filesystem, path or glob pattern in it, prefix for user-facing URIs).

    Raises:
        SourceError: an object-store URI carrying connection options (a query string,
            credentials; so ``?`` is no glob character there), or one pyarrow cannot open.
    """
    import os

    import pyarrow.fs as pafs

    if "://" not in source:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(source)), ""
    split_location(source)  # refuses options: only configuration sets up an object store
    scheme = source.split("://", 1)[0]
    has_glob = any(c in source for c in _GLOB_CHARS)
    base = _glob_base(source) if has_glob else source
    try:
        fs, path = pafs.FileSystem.from_uri(base)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise SourceError(f"cannot open source {source}: {e}") from e
    if has_glob:
        path = path.rstrip("/") + "/" + source[len(base) :]
    return fs, path, "" if scheme == "file" else f"{scheme}://"


def _glob_base(pattern: str) -> str:
    cut = min(pattern.index(c) for c in _GLOB_CHARS if c in pattern)
    return pattern[: pattern.rfind("/", 0, cut) + 1] or "."


def _list(fs, base: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    # Hidden and underscore files are bookkeeping (Spark's _SUCCESS, .crc), as for pyarrow.
    return sorted(
        i.path for i in infos if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith(("_", "."))
    )


def glob_match(path: str, pattern: str) -> bool:
    """Shell-style match segment by segment: ``*`` stays within a directory, ``**`` spans any number."""

    def match(parts: list[str], pats: list[str]) -> bool:
        if not pats:
            return not parts
        if pats[0] == "**":
            return any(match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) and match(parts[1:], pats[1:])

    return match(path.strip("/").split("/"), pattern.strip("/").split("/"))


def _kind_of(files: list[str], source: str) -> str:
    lower = [f.lower() for f in files]
    kinds = {
        "parquet": sum(f.endswith(".parquet") for f in lower),
        "webdataset": sum(f.endswith(".tar") for f in lower),
        "images": sum(f.endswith(IMAGE_EXTENSIONS) for f in lower),
    }
    present = [k for k, n in kinds.items() if n]
    if not present:
        raise SourceError(f"source {source} holds no images, Parquet files or .tar shards")
    if len(present) > 1:
        raise SourceError(f"source {source} mixes {' and '.join(present)} files; point at one kind")
    return present[0]


def resolve_source(source: str) -> ResolvedSource:
    """Find out what SOURCE is and which files it covers.

    Raises:
        SourceError: it does not exist, holds nothing readable, or mixes kinds.
    """
    import pyarrow.fs as pafs

    fs, path, prefix = _filesystem(source)
    if any(c in path for c in _GLOB_CHARS):
        base = _glob_base(path)
        try:
            files = [f for f in _list(fs, base.rstrip("/") or "/") if glob_match(f, path)]
        except OSError as e:
            raise SourceError(f"cannot list {base} for source pattern {source}: {e}") from e
        if not files:
            raise SourceError(f"source pattern {source} matches no files")
    else:
        try:
            info = fs.get_file_info(path)
        except OSError as e:
            raise SourceError(f"cannot read source {source}: {e}") from e
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"source not found: {source}")
        if info.type not in (pafs.FileType.File, pafs.FileType.Directory):  # a device or FIFO: reads never end
            raise SourceError(f"source {source} is not a regular file or directory")
        files = _list(fs, path) if info.type == pafs.FileType.Directory else [path]
        if not files:
            raise SourceError(f"source directory {source} is empty")
    kind = _kind_of(files, source)
    if kind == "images":
        files = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return ResolvedSource(kind, fs, files, prefix)


def _meta_json(row: dict[str, Any]) -> str:
    meta = {}
    for k, v in row.items():
        if k in _KNOWN_COLUMNS or k.startswith("__") or isinstance(v, (bytes, bytearray)):
            continue
        meta[k] = v
    return json.dumps(meta, default=str, sort_keys=True)


def _str(v: Any) -> str:
    return "" if v is None else str(v)


class ParquetRows:
    """Map Parquet rows (``image`` bytes or ``path``, optional subject/tenant, metadata) to items."""

    def __init__(self, resolved: ResolvedSource, base_dir: str):
        self.resolved = resolved
        self.base_dir = base_dir

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = []
        for row in batch.to_pylist():
            image = row.get("image") or b""
            path = _str(row.get("path"))
            if path and "://" not in path and not path.startswith("/"):
                path = posixpath.join(self.base_dir, path)  # manifests name files relative to themselves
            location = self.resolved.uri(path) if path and "://" not in path else path
            items.append(
                {
                    "source": _str(row.get("source")) or location,  # load fills "content:<keyed hash>" if empty
                    "path": location if not image else "",
                    "image": image,
                    "subject": _str(row.get("subject")),
                    "tenant": _str(row.get("tenant")),
                    "meta": _meta_json(row),
                }
            )
        return pa.Table.from_pylist(items, schema=ITEM_SCHEMA)


class WebDatasetSamples:
    """Map WebDataset samples (``<key>.<image ext>`` plus optional ``.json``/``.txt``) to items."""

    def __init__(self, resolved: ResolvedSource):
        self.resolved = resolved

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = []
        for row in batch.to_pylist():
            image = next((row[c] for c in row if c.lstrip(".").lower() in _WDS_IMAGE_KEYS and row[c]), b"")
            meta: dict[str, Any] = {}
            if row.get("json"):
                try:
                    loaded = json.loads(row["json"])
                    meta = loaded if isinstance(loaded, dict) else {"json": loaded}
                except ValueError:
                    meta = {}
            for key in ("txt", "cls"):
                if row.get(key):
                    meta[key] = row[key].decode("utf-8", "replace")
            shard = self.resolved.uri(_str(row.get("__url__")))
            items.append(
                {
                    "source": f"{shard}#{row.get('__key__')}",
                    "path": "",
                    "image": image,
                    "subject": _str(meta.pop("subject", "")),
                    "tenant": _str(meta.pop("tenant", "")),
                    "meta": json.dumps(meta, default=str, sort_keys=True),
                }
            )
        return pa.Table.from_pylist(items, schema=ITEM_SCHEMA)


_WDS_IMAGE_KEYS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}


def read_items(resolved: ResolvedSource, ray_remote_args: Optional[dict] = None):
    """Build the read stage: a Ray dataset of items in :data:`ITEM_SCHEMA`.

    Args:
        resolved: the source, from :func:`resolve_source`.
        ray_remote_args: what each read task asks Ray for (``job.task_resources``).

    Returns:
        The dataset.
    """
    import ray

    log.info("source: %d %s file(s)", len(resolved.files), resolved.kind)
    args = dict(ray_remote_args or {})
    if resolved.kind == "images":
        n = len(resolved.files)
        rows_per_block = max(_MIN_BLOCK_ROWS, -(-n // _TARGET_BLOCKS))
        tables = []
        for start in range(0, n, rows_per_block):
            chunk = resolved.files[start : start + rows_per_block]
            uris = [resolved.uri(f) for f in chunk]
            tables.append(
                pa.table(
                    {
                        "source": uris,
                        "path": uris,
                        "image": pa.array([b""] * len(chunk), pa.binary()),
                        "subject": [""] * len(chunk),
                        "tenant": [""] * len(chunk),
                        "meta": ["{}"] * len(chunk),
                    },
                    schema=ITEM_SCHEMA,
                )
            )
        return ray.data.from_arrow(tables)
    if resolved.kind == "parquet":
        base_dir = posixpath.dirname(resolved.files[0]) if len(resolved.files) == 1 else posixpath.commonpath(resolved.files)
        ds = ray.data.read_parquet(resolved.files, filesystem=resolved.filesystem, ray_remote_args=args)
        return ds.map_batches(ParquetRows(resolved, base_dir), batch_format="pyarrow", batch_size=None, **args)
    ds = ray.data.read_webdataset(resolved.files, filesystem=resolved.filesystem, decoder=None, ray_remote_args=args)
    return ds.map_batches(WebDatasetSamples(resolved), batch_format="pyarrow", batch_size=None, **args)
