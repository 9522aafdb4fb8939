"""Image decoding, in one place: the safe CPU decode every image goes through
(:mod:`.decode`: formats allowed, pixel caps, EXIF rotation, RGB) and the JPEG decode on
the encoder's GPU (:mod:`.device`). The embed job's decode stage
(:mod:`pixlake.platform.pipeline.decode`) and the Serve API call these."""

from pixlake.platform.images.decode import (  # noqa: F401 - the package's interface
    ALLOWED_FORMATS,
    DecodeLimits,
    Rejection,
    content_hash,
    decode_image,
)
