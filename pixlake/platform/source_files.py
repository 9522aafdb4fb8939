"""Read an item's image bytes back from where its ``source`` says they came from.

The load stage of the embed job reads plain locations (a local path or any
``pyarrow.fs`` URI); the serving side also reads WebDataset members (``shard.tar#key``)
to draw thumbnails. Both go through :class:`SourceReader`, so a location means the same
thing everywhere.
"""

from __future__ import annotations

import tarfile
from typing import Any

from pixlake.platform.errors import SourceError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class SourceTooLarge(SourceError):
    """The file is over the byte cap; it was not read."""


class SourceUnavailable(SourceError):
    """Nothing can be read at this location (missing file, inline bytes, unknown member)."""


class SourceReader:
    """Reads bytes at locations, keeping one filesystem per object-store bucket.

    Args:
        max_bytes: files larger than this raise :class:`SourceTooLarge` without being read.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._filesystems: dict[str, Any] = {}

    def _resolve(self, location: str) -> tuple[Any, str]:
        import pyarrow.fs as pafs

        scheme, _, rest = location.rpartition("://")
        if scheme in ("", "file"):
            return self._filesystems.setdefault("", pafs.LocalFileSystem()), rest
        # from_uri is slow for object stores (credentials, region): once per bucket.
        key = f"{scheme}://{rest.split('/', 1)[0]}"
        if key not in self._filesystems:
            self._filesystems[key] = pafs.FileSystem.from_uri(location)[0]
        return self._filesystems[key], rest  # pyarrow paths are "bucket/key"

    def read(self, location: str) -> bytes:
        """The bytes of the file at ``location``.

        Raises:
            SourceUnavailable: no such file.
            SourceTooLarge: the file is over ``max_bytes``.
            OSError, ValueError: the filesystem could not read it.
        """
        import pyarrow.fs as pafs

        fs, path = self._resolve(location)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise SourceUnavailable(f"no such file: {location}")
        if info.size is not None and info.size > self.max_bytes:
            raise SourceTooLarge(f"too_large: {info.size} bytes > cap {self.max_bytes}")
        with fs.open_input_stream(path) as f:
            return f.read()

    def read_source(self, source: str) -> bytes:
        """The image bytes of a row's ``source``: a file, or a WebDataset member ``shard.tar#key``.

        Raises:
            SourceUnavailable: the source names no readable image (inline bytes were
                embedded as ``content:<hash>``; a missing file or member).
            SourceTooLarge: the image is over ``max_bytes``.
            OSError, ValueError: the filesystem could not read it.
        """
        if source.startswith("content:"):
            raise SourceUnavailable("the image was embedded from inline bytes; no source file to read")
        try:
            return self.read(source)
        except SourceUnavailable:
            shard, sep, key = source.rpartition("#")
            if not sep or not shard.endswith(".tar"):
                raise
        return self._read_member(shard, key)

    def _read_member(self, shard: str, key: str) -> bytes:
        import pyarrow.fs as pafs

        fs, path = self._resolve(shard)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise SourceUnavailable(f"no such file: {shard}")
        # A seekable file: tarfile reads the headers and skips over the members' data.
        with fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                # WebDataset's key is the member name up to the first dot of its basename
                name = member.name.lower()
                if member.name.startswith(key + ".") and name.endswith(IMAGE_EXTENSIONS) and member.isfile():
                    if member.size > self.max_bytes:
                        raise SourceTooLarge(f"too_large: {member.size} bytes > cap {self.max_bytes}")
                    return tar.extractfile(member).read()
        raise SourceUnavailable(f"no image member {key!r} in {shard}")
