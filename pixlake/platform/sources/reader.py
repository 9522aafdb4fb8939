"""Read an item's image bytes back from where its ``source`` says they came from.

The load stage of the embed job reads plain locations (a local path or any
``pyarrow.fs`` URI); the serving side also reads WebDataset members (``shard.tar#key``)
to draw thumbnails. Both go through :class:`SourceReader`, so a location means the same
thing everywhere.

Locations come from manifests, so they are untrusted: an object-store URI may not carry
connection options (pyarrow would take ``?endpoint_override=...&scheme=http`` or
``user:secret@`` from it and send the worker's requests where the manifest says); those
come from the workers' configuration only (``AWS_ENDPOINT_URL``, ``AWS_REGION``, the
credentials chain). And no read takes more than the byte cap plus one byte, whatever size
the file claims: ``/proc`` files claim 0 bytes, devices and FIFOs are refused unread.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from typing import Any, BinaryIO, Optional

from pixlake.platform.errors import SourceError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_CHUNK = 1 << 20  # bytes per read call of a capped read


class SourceTooLarge(SourceError):
    """The file is over the byte cap; at most the cap plus one byte of it was read."""


class SourceUnavailable(SourceError):
    """Nothing can be read at this location (missing file, not a regular file, inline bytes, unknown member)."""


class SourceRefused(SourceError):
    """The location carries connection options (a query string, credentials) that only configuration may set."""


def split_location(location: str) -> tuple[str, str, str]:
    """Split a location into ``(scheme, authority, rest)``.

    A local path (no ``scheme://``, or ``file://``) is ``("", "", path)``. An object-store
    URI is ``(scheme, authority, authority/key)``: ``rest`` is the path pyarrow expects
    (``bucket/key``), and ``scheme://authority`` is everything the filesystem is built from.

    Raises:
        SourceRefused: an object-store URI with a query string or credentials in it.
    """
    scheme, sep, rest = location.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return "", "", location  # a local path, even one with "://" inside it
    scheme = scheme.lower()
    if scheme == "file":
        return "", "", rest
    authority = rest.split("/", 1)[0]
    if "?" in rest or "@" in authority:
        raise SourceRefused(
            f"refused: {scheme}:// URIs carry no query string or credentials (connection options such as "
            "endpoint_override, scheme or keys come from the workers' configuration, e.g. AWS_ENDPOINT_URL)"
        )
    return scheme, authority, rest


def read_capped(f: BinaryIO, max_bytes: int) -> bytes:
    """Read ``f`` to its end, but never more than ``max_bytes + 1`` bytes.

    Raises:
        SourceTooLarge: there is more than ``max_bytes``.
    """
    chunks, total = [], 0
    while total <= max_bytes:
        chunk = f.read(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise SourceTooLarge(f"too_large: over the cap of {max_bytes} bytes")
    return b"".join(chunks)


def open_local(path: str) -> BinaryIO:
    """Open a local regular file for reading (seekable).

    O_NONBLOCK: opening a FIFO does not wait for a writer, so it can be refused.

    Raises:
        SourceUnavailable: no such file, or not a regular file (device, FIFO, socket, directory).
        OSError: it could not be opened (permissions).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except (FileNotFoundError, NotADirectoryError) as e:
        raise SourceUnavailable(f"no such file: {path}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceUnavailable(f"not a regular file: {path}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class SourceReader:
    """Reads bytes at locations, keeping one filesystem per object-store bucket.

    Args:
        max_bytes: files larger than this raise :class:`SourceTooLarge`, after at most
            ``max_bytes + 1`` bytes were read.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        # Keyed by "scheme://authority", exactly what each was built from: no location can
        # configure a filesystem that a later location of the same bucket then uses.
        self._filesystems: dict[str, Any] = {}

    def _remote(self, scheme: str, authority: str) -> Any:
        import pyarrow.fs as pafs

        # from_uri is slow for object stores (credentials, region): once per bucket.
        root = f"{scheme}://{authority}"
        if root not in self._filesystems:
            self._filesystems[root] = pafs.FileSystem.from_uri(root)[0]
        return self._filesystems[root]

    def _open(self, location: str, seekable: bool, cap: Optional[int]) -> BinaryIO:
        """An open regular file at ``location``; a remote one whose size is known to be over
        ``cap`` is refused unread."""
        import pyarrow.fs as pafs

        scheme, authority, path = split_location(location)
        if not scheme:
            return open_local(path)
        fs = self._remote(scheme, authority)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise SourceUnavailable(f"no such file: {location}")
        if cap is not None and info.size is not None and info.size > cap:
            raise SourceTooLarge(f"too_large: {info.size} bytes > cap {cap}")
        return fs.open_input_file(path) if seekable else fs.open_input_stream(path)

    def read(self, location: str) -> bytes:
        """The bytes of the file at ``location``.

        Raises:
            SourceUnavailable: no such file, or not a regular file.
            SourceTooLarge: the file is over ``max_bytes`` (whatever size it claims).
            SourceRefused: an object-store URI carrying connection options.
            OSError, ValueError: the filesystem could not read it.
        """
        with self._open(location, seekable=False, cap=self.max_bytes) as f:
            return read_capped(f, self.max_bytes)

    def read_source(self, source: str) -> bytes:
        """The image bytes of a row's ``source``: a file, or a WebDataset member ``shard.tar#key``.

        Raises:
            SourceUnavailable: the source names no readable image (inline bytes were
                embedded as ``content:<hash>``; a missing file or member).
            SourceTooLarge: the image is over ``max_bytes``.
            SourceRefused: an object-store URI carrying connection options.
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
        # A seekable file: tarfile reads the headers and skips over the members' data.
        with self._open(shard, seekable=True, cap=None) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                # WebDataset's key is the member name up to the first dot of its basename
                name = member.name.lower()
                if member.name.startswith(key + ".") and name.endswith(IMAGE_EXTENSIONS) and member.isfile():
                    if member.size > self.max_bytes:
                        raise SourceTooLarge(f"too_large: {member.size} bytes > cap {self.max_bytes}")
                    return read_capped(tar.extractfile(member), self.max_bytes)
        raise SourceUnavailable(f"no image member {key!r} in {shard}")
