"""What a long job shows on the terminal: one progress display, its summary and errors;
Ray's own log lines go to a log file unless ``--verbose``.

Ray writes on stderr from three places: its Python loggers (``ray``, ``ray.data``,
``ray.serve``: the token-auth notice, "Started a local Ray instance", Ray Data's progress
logs), the C++ core worker of the driver (error-level lines such as the actor-restart
notice, written straight to file descriptor 2) and Ray Data's progress bars.
:func:`ray_logs` sends the first two to the log file, keeping the Python loggers' ERROR
records on the terminal, and turns the progress bars off; pixlake's own lines, warnings
and errors still reach stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, TextIO

RAY_LOGGERS = ("ray", "ray.data", "ray.serve")
NOT_A_TTY_EVERY_S = 10.0  # a progress line at most this often when stderr is a file or a pipe


def log_path(command: str) -> Path:
    """Where a run of ``command`` writes Ray's log lines (``$TMPDIR/pixlake/<command>-<time>-<pid>.log``)."""
    return Path(tempfile.gettempdir()) / "pixlake" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextlib.contextmanager
def ray_logs(command: str, verbose: bool) -> Iterator[Optional[Path]]:
    """Within the block, Ray's log lines go to :func:`log_path` (yielded), or, ``verbose``,
    to stderr as Ray writes them (then pixlake's INFO lines show too; None is yielded).
    When the block raises after Ray wrote there, one line on stderr says where the log is;
    a log left empty is removed."""
    if verbose:
        pixlake_logger = logging.getLogger("pixlake")
        level = pixlake_logger.level
        pixlake_logger.setLevel(logging.INFO)
        try:
            yield None
        finally:
            pixlake_logger.setLevel(level)
        return
    import ray.data  # its logging is configured on import: before the loggers are redirected

    path = log_path(command)
    path.parent.mkdir(parents=True, exist_ok=True)
    context = ray.data.DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, False
    try:
        with open(path, "a", buffering=1) as log, _descriptor_2_to(log) as terminal, _loggers_to(log, terminal):
            yield path
    except BaseException:
        if _size(path):
            print(f"pixlake: Ray's log lines of this run are in {path} (--verbose shows them)", file=sys.stderr)
        raise
    finally:
        context.enable_progress_bars = bars
        if not _size(path):
            path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # removed meanwhile (a tmp cleaner)
        return 0


@contextlib.contextmanager
def _descriptor_2_to(log: TextIO) -> Iterator[TextIO]:
    """Point file descriptor 2 at ``log``; ``sys.stderr``, when it wrote to descriptor 2, now
    writes to a copy of the terminal's descriptor (yielded)."""
    sys.stderr.flush()
    saved = os.dup(2)
    redirect_stream = _writes_to_descriptor_2(sys.stderr)
    terminal = open(saved, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                    errors="backslashreplace", closefd=False)
    stderr = sys.stderr
    os.dup2(log.fileno(), 2)
    if redirect_stream:
        sys.stderr = terminal
    try:
        yield terminal if redirect_stream else stderr
    finally:
        for stream in (sys.stderr, terminal):
            stream.flush()
        os.dup2(saved, 2)
        if redirect_stream:
            sys.stderr = stderr
        terminal.close()
        os.close(saved)


def _writes_to_descriptor_2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a test's capture, a StringIO
        return False


@contextlib.contextmanager
def _loggers_to(log: TextIO, terminal: TextIO) -> Iterator[None]:
    """Replace the console handlers of Ray's loggers by one writing their INFO records and up
    to ``log`` and one writing their ERROR records to ``terminal``; the root logger's handlers
    (pixlake's and other libraries' lines) that wrote to descriptor 2 write to ``terminal``."""
    to_log = logging.StreamHandler(log)
    to_log.setLevel(logging.INFO)
    to_log.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"))
    errors = logging.StreamHandler(terminal)
    errors.setLevel(logging.ERROR)
    errors.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    replaced = []
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        console = [h for h in logger.handlers
                   if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        replaced.append((logger, list(logger.handlers)))
        for h in console:
            logger.removeHandler(h)
        if console:  # a logger that propagates without handlers of its own reaches "ray"'s
            logger.addHandler(to_log)
            logger.addHandler(errors)
    repointed = [(h, h.setStream(terminal)) for h in logging.getLogger().handlers
                 if type(h) is logging.StreamHandler and _writes_to_descriptor_2(h.stream)]
    try:
        yield
    finally:
        for h, stream in repointed:
            h.setStream(stream)
        for logger, before in replaced:  # as they were, in their order, plus any added meanwhile
            added = [h for h in logger.handlers if h not in before and h is not to_log and h is not errors]
            logger.handlers = before + added


class ProgressDisplay:
    """One progress line on ``stream``: items done of the total when known, images/s, ETA.

    On a terminal it is rewritten in place; elsewhere (a file, a pipe, a CI log) a line is
    written at most every :data:`NOT_A_TTY_EVERY_S`.
    """

    def __init__(self, stream: TextIO, label: str = "embedding"):
        self.stream, self.label = stream, label
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started: Optional[float] = None
        self.shown_at, self.width = 0.0, 0
        self.last: Optional[str] = None  # the latest line, when it was not shown

    def __call__(self, done: int, total: Optional[int]) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        line = self.line(done, total, now - self.started)
        if not self.tty and now - self.shown_at < NOT_A_TTY_EVERY_S:
            self.last = line
            return
        self.shown_at, self.last = now, None
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, done: int, total: Optional[int], seconds: float) -> str:
        """The display's text after ``seconds`` with ``done`` of ``total`` items."""
        rate = done / seconds if seconds > 0 else 0.0
        parts = [f"{self.label}  {done:,}/{total:,} items" if total is not None else f"{self.label}  {done:,} items",
                 f"{rate:.1f} images/s"]
        if total is not None and rate > 0 and done < total:
            parts.append(f"ETA {_duration((total - done) / rate)}")
        return "  ".join(parts)

    def close(self) -> None:
        """End the line on a terminal, or write the latest line not shown yet elsewhere."""
        if self.tty and self.width:
            self.stream.write("\n")
        elif self.last is not None:
            self.stream.write(self.last + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"


@contextlib.contextmanager
def progress_display(stream: Optional[TextIO] = None) -> Iterator[ProgressDisplay]:
    """A :class:`ProgressDisplay` on ``stream`` (default: stderr), closed after the block."""
    display = ProgressDisplay(stream or sys.stderr)
    try:
        yield display
    finally:
        display.close()
