"""pixlake makes no deprecated call: no ``DeprecationWarning`` raised from a file under
``pixlake/`` and no Ray deprecation log line whose call stack passes through ``pixlake/``
(Ray logs some deprecations, ``map_batches(concurrency=...)`` among them, instead of warning)."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
import warnings
from pathlib import Path

import pixlake
from tests.conftest import tiny_settings

PIXLAKE = Path(pixlake.__file__).resolve().parent
RAY_LOGGERS = ("ray", "ray.data")  # "ray.data" does not propagate to "ray"


class _DeprecationLog(logging.Handler):
    """Collects deprecation log lines emitted while a frame under ``root`` is on the stack."""

    def __init__(self, root: Path):
        super().__init__(logging.DEBUG)
        self.root, self.found = root, []

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" in record.getMessage().lower():
            callers = traceback.extract_stack(sys._getframe(1))  # not this frame: it may lie under root
            ours = [f for f in callers if _under(f.filename, self.root)]
            if ours:
                self.found.append(f"{ours[-1].filename}:{ours[-1].lineno}: {record.getMessage()}")


def _under(filename: str, root: Path) -> bool:
    return Path(filename).resolve().is_relative_to(root)


@contextlib.contextmanager
def deprecations_from(root: Path):
    """Yield a list that fills with the deprecations raised or logged from code under ``root``."""
    handler, found = _DeprecationLog(root), []
    loggers = [logging.getLogger(name) for name in RAY_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    found.extend(f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                 if issubclass(w.category, DeprecationWarning) and _under(w.filename, root))
    found.extend(handler.found)


def test_the_detector_sees_a_deprecated_ray_call_and_a_deprecation_warning(ray_session):
    import ray.data

    class Identity:
        def __call__(self, batch):
            return batch

    here = Path(__file__).resolve().parent
    with deprecations_from(here) as found:
        ray.data.range(2).map_batches(Identity, concurrency=1)  # lazy: logs the deprecation, runs nothing
        warnings.warn("old", DeprecationWarning)
    assert len(found) == 2 and found[0].endswith(": old") and "``concurrency`` is deprecated" in found[1], found
    with deprecations_from(PIXLAKE) as found:  # neither call came from pixlake/
        ray.data.range(2).map_batches(Identity, concurrency=1)
    assert found == []


def test_an_embed_job_makes_no_deprecated_call_and_reports_its_progress(ray_session, tmp_path):
    from pixlake.platform.corpus import write_corpus
    from pixlake.platform.pipeline.job import run_embed_job

    write_corpus(tmp_path / "c", 4, seed=3)
    progress = []
    with deprecations_from(PIXLAKE) as found:
        report = run_embed_job(str(tmp_path / "c" / "images"), tiny_settings(tmp_path / "p.db"),
                               progress=lambda done, total: progress.append((done, total)))
    assert report.embedded == 4
    assert found == [], "\n".join(found)
    # items done of the total the folder gives, never backwards, ending with every item done
    assert progress[-1] == (4, 4) and progress == sorted(progress), progress
