"""The package's one exception hierarchy.

Every error a user can cause derives from :class:`PixlakeError`, so the CLI can turn
it into a one-line message and a non-zero exit instead of a traceback.
"""


class PixlakeError(Exception):
    """Base class of every error pixlake raises on purpose."""


class ConfigError(PixlakeError):
    """A setting, flag or config file is invalid; the message names the field."""


class SourceError(PixlakeError):
    """An input source is missing, unreadable or of an unknown kind."""


class ModelError(PixlakeError):
    """An encoder cannot be loaded (unknown name, missing weights, offline)."""


class StoreError(PixlakeError):
    """The vector store cannot be opened, written or queried."""


class GovernanceError(PixlakeError):
    """Keys, encryption or erasure cannot proceed (no key source, shredded key, tampered data)."""
