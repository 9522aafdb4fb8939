"""Model lifecycle: versions of a collection behind one live name (:mod:`.versions`:
resolve, promote, rollback, the serving side's LiveCollection) and re-indexing into the
next version behind a quality gate (:mod:`.reindex`)."""

from pixlake.platform.lifecycle.versions import (  # noqa: F401 - the package's interface
    FOLLOW_S,
    LiveCollection,
    check_live_name,
    next_version,
    promote,
    resolve,
    rollback,
    tenants,
    versions,
)
