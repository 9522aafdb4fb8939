"""The filter language: structured filters turned into escaped Milvus boolean expressions.

Pure functions, nothing from the rest of the store: a filter is a request's input, and each
key or value becomes part of an expression the Milvus server parses, so every value goes
through :func:`literal` and every key must be a plain identifier. The bounds below are
documented in docs/security.md.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Optional

from pixlake.platform import records as R
from pixlake.platform.errors import ConfigError

MAX_FILTER_KEYS, MAX_FILTER_VALUES, MAX_FILTER_STRING = 16, 100, 1024
_INT64 = 2 ** 63
_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, newline and return round-trip
# Milvus string literals know only these escapes (no \uXXXX): everything else, non-ASCII
# included, goes in verbatim.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}


def literal(value: Any) -> str:
    """A Milvus expression literal for a scalar, escaped.

    Raises:
        ConfigError: not a scalar, a non-finite or out-of-range number, or a string that is
            too long or holds control characters other than tab, newline and carriage return.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ConfigError(f"filter value {value}: outside the 64-bit integer range")
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"filter value {value!r}: not a finite number")
        return repr(value)
    if isinstance(value, str):
        if len(value) > MAX_FILTER_STRING:
            raise ConfigError(f"filter value: longer than {MAX_FILTER_STRING} characters")
        if _CONTROL.search(value):
            raise ConfigError(f"filter value {value!r}: control characters other than tab, newline and return")
        return '"' + "".join(_ESCAPES.get(c, c) for c in value) + '"'

    raise ConfigError(f"filter value {value!r}: expected a string, number or boolean")


class Filter(str):
    """A built filter: the Milvus expression (it is the string), plus the same test on a
    stored row in Python (:meth:`matches`). milvus-lite scans every row for any predicate
    beside a primary-key lookup (a JSON key one took 6.5 s at 100k rows), so the Searcher's
    local copy of the rows tests its candidates here. A filter extended by string
    concatenation is a plain ``str`` again, with no Python test."""

    _tests: tuple[Callable[[Mapping[str, Any]], bool], ...]

    def __new__(cls, expression: str, tests: tuple = ()) -> "Filter":
        built = super().__new__(cls, expression)
        built._tests = tests
        return built

    def __reduce__(self):
        return str, (str(self),)  # pickled, it is the expression alone (its tests are closures)

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether a stored ``row`` passes, as Milvus would decide it."""
        return all(test(row) for test in self._tests)


def _same(stored: Any, wanted: Any) -> bool:
    """JSON equality as milvus-lite applies it (tested against it): numbers and booleans
    compare as numbers (true equals 1, 1 equals 1.0), strings only with strings."""
    if isinstance(stored, (bool, int, float)) and isinstance(wanted, (bool, int, float)):
        return stored == wanted
    return type(stored) is type(wanted) and stored == wanted


def _field_is(field: str, value: Any) -> Callable[[Mapping[str, Any]], bool]:
    return lambda row: row.get(field) == value


def _meta_is(key: str, values: tuple) -> Callable[[Mapping[str, Any]], bool]:
    def test(row: Mapping[str, Any]) -> bool:
        meta = row.get(R.META) or {}
        return key in meta and any(_same(meta[key], v) for v in values)
    return test


def build_filter(tenant: Optional[str] = None, meta: Optional[Mapping[str, Any]] = None,
                 subject: Optional[str] = None) -> Filter:
    """Turn structured filters into a Milvus boolean expression, escaping every value.

    Args:
        tenant: confine to this tenant.
        meta: ``{key: value}`` equality (or ``{key: [v1, v2]}`` membership) on the ``meta`` JSON field.
        subject: confine to this subject pseudonym.

    Returns:
        The expression; ``""`` when there is nothing to filter.

    Raises:
        ConfigError: a key is not a plain identifier or a value is not a scalar, or a bound
            (keys, values per key, string length) is exceeded.
    """
    parts, tests = [], []
    if tenant is not None:
        parts.append(f"{R.TENANT} == {literal(tenant)}")
        tests.append(_field_is(R.TENANT, tenant))
    if subject is not None:
        parts.append(f"{R.SUBJECT} == {literal(subject)}")
        tests.append(_field_is(R.SUBJECT, subject))
    if meta and len(meta) > MAX_FILTER_KEYS:
        raise ConfigError(f"filter: {len(meta)} keys, at most {MAX_FILTER_KEYS}")
    for key, value in (meta or {}).items():
        if not isinstance(key, str) or not _META_KEY.fullmatch(key):  # fullmatch: `$` would let "a\n" through
            raise ConfigError(f"filter key {key!r}: letters, digits, '_' and '-' only")
        field = f'{R.META}["{key}"]'
        if isinstance(value, (list, tuple)):
            # milvus-lite takes `in` only on plain fields; an OR-chain works on JSON keys
            # everywhere, and the brackets keep it from widening the surrounding `and`.
            if not value:
                raise ConfigError(f"filter key {key!r}: empty list matches nothing")
            if len(value) > MAX_FILTER_VALUES:
                raise ConfigError(f"filter key {key!r}: {len(value)} values, at most {MAX_FILTER_VALUES}")
            parts.append("(" + " or ".join(f"{field} == {literal(v)}" for v in value) + ")")
            tests.append(_meta_is(key, tuple(value)))
        else:
            parts.append(f"{field} == {literal(value)}")
            tests.append(_meta_is(key, (value,)))
    return Filter(" and ".join(parts), tuple(tests))
