"""The API's client errors: :class:`ApiError` (a 4xx with a stable code) and the request
decoding every route shares (base64 fields)."""

from __future__ import annotations

import base64
import binascii
from typing import Optional


class ApiError(Exception):
    """A 4xx answer with a stable code and a message."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def b64(field: str, value: str) -> bytes:
    """A base64 request field's bytes, or a 422 naming the field."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(422, "invalid_request", f"{field}: not valid base64") from e
