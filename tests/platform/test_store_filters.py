"""The filter language (pixlake.platform.store.filters) as plain functions: no Milvus.

Every bound and every refusal, and the quoting of values. That an escaped value matches
exactly the row holding it (and widens nothing) on a real Milvus is the conformance
suite's part (tests/platform/test_store_conformance.py).
"""

from __future__ import annotations

import math

import pytest

from pixlake.platform.errors import ConfigError
from pixlake.platform.store.filters import (
    MAX_FILTER_KEYS,
    MAX_FILTER_STRING,
    MAX_FILTER_VALUES,
    build_filter,
    literal,
)

# The inverse of literal's escaping, written independently: a Milvus string literal's body.
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r"}


def unquote(text: str) -> str:
    """What Milvus reads from a quoted string literal (only the four escapes literal writes);
    fails when a double quote inside would close the literal early."""
    assert text[0] == text[-1] == '"', text
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        assert body[i] != '"', f"unescaped quote at {i} in {text!r}"
        if body[i] == "\\":
            out.append(_UNESCAPE[body[i + 1]])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


# --- literal: scalars ----------------------------------------------------------------------


@pytest.mark.parametrize("value, text", [
    (True, "true"), (False, "false"), (0, "0"), (-7, "-7"), (1.5, "1.5"), (-0.25, "-0.25"),
    (2 ** 63 - 1, "9223372036854775807"), (-(2 ** 63), "-9223372036854775808"), ("", '""'), ("abc", '"abc"'),
])
def test_literal_of_scalars(value, text: str):
    assert literal(value) == text


def test_a_bool_is_never_written_as_an_int():
    # bool is a subclass of int: true must not become 1
    assert literal(True) != literal(1) and literal(False) != literal(0)


@pytest.mark.parametrize("value", [2 ** 63, -(2 ** 63) - 1, 10 ** 30])
def test_integers_outside_int64_are_refused(value: int):
    with pytest.raises(ConfigError, match="64-bit"):
        literal(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value: float):
    with pytest.raises(ConfigError, match="finite"):
        literal(value)


@pytest.mark.parametrize("value", [None, b"bytes", {"a": 1}, [1], (1,), object(), 1j])
def test_non_scalars_are_refused(value):
    with pytest.raises(ConfigError, match="expected a string, number or boolean"):
        literal(value)


# --- literal: strings ----------------------------------------------------------------------


@pytest.mark.parametrize("value, text", [
    ('"', '"\\""'),
    ("\\", '"\\\\"'),
    ('\\"', '"\\\\\\""'),
    ("two\nlines", '"two\\nlines"'),
    ("cr\rhere", '"cr\\rhere"'),
    ("tab\there", '"tab\there"'),  # a tab goes in verbatim
    ("it's", '"it\'s"'),  # single quotes need no escape inside double quotes
    ("café 日本 😀", '"café 日本 😀"'),  # no \\uXXXX escapes: Milvus has none
])
def test_string_escapes(value: str, text: str):
    assert literal(value) == text


@pytest.mark.parametrize("value", [
    "", "plain", '"', "\\", "\\\\", '\\"', 'x" or tenant != "', 't1") or (1 == 1', "a\\", "tab\there",
    "two\nlines", "cr\r\nlf", "café", "smile😀", "\"\\\n\r\t" * 50, "x" * MAX_FILTER_STRING,
])
def test_string_literals_round_trip(value: str):
    assert unquote(literal(value)) == value


def test_string_length_bound():
    assert literal("x" * MAX_FILTER_STRING) == '"' + "x" * MAX_FILTER_STRING + '"'
    with pytest.raises(ConfigError, match=f"longer than {MAX_FILTER_STRING}"):
        literal("x" * (MAX_FILTER_STRING + 1))


def test_the_length_bound_counts_characters_before_escaping():
    # 1024 backslashes escape to 2048 characters and are still within the bound
    assert len(literal("\\" * MAX_FILTER_STRING)) == 2 * MAX_FILTER_STRING + 2


@pytest.mark.parametrize("char", [chr(c) for c in (*range(0, 9), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)])
def test_control_characters_are_refused(char: str):
    with pytest.raises(ConfigError, match="control characters"):
        literal(f"a{char}b")


@pytest.mark.parametrize("char", ["\t", "\n", "\r"])
def test_tab_newline_and_return_are_allowed(char: str):
    assert unquote(literal(f"a{char}b")) == f"a{char}b"


# --- build_filter: shapes ------------------------------------------------------------------


def test_build_filter_shapes():
    assert build_filter() == ""
    assert build_filter(meta={}) == ""
    assert build_filter(tenant="t") == 'tenant == "t"'
    assert build_filter(subject="s") == 'subject == "s"'
    assert build_filter(tenant="t", meta={"a": 1, "b": False, "c": "x"}) == (
        'tenant == "t" and meta["a"] == 1 and meta["b"] == false and meta["c"] == "x"'
    )
    assert build_filter("t", {"k": "v"}, "s") == 'tenant == "t" and subject == "s" and meta["k"] == "v"'
    assert build_filter(tenant='q"\\') == 'tenant == "q\\"\\\\"'


def test_an_empty_tenant_still_filters():
    # "" is a tenant value, not "no tenant": it must not widen to every row
    assert build_filter(tenant="") == 'tenant == ""'


def test_membership_is_a_bracketed_or_chain():
    assert build_filter(tenant="t", meta={"c": ["red", "blue"]}) == (
        'tenant == "t" and (meta["c"] == "red" or meta["c"] == "blue")'
    )
    assert build_filter(meta={"n": (1, 2.5, True)}) == '(meta["n"] == 1 or meta["n"] == 2.5 or meta["n"] == true)'


def test_injection_stays_inside_the_literal():
    value = 't1" or tenant != "'
    expr = build_filter(tenant=value)
    assert expr == 'tenant == "t1\\" or tenant != \\""'
    assert unquote(expr[len("tenant == "):]) == value


# --- build_filter: keys --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "_", "A_b-9", "x" * 64, "colour"])
def test_plain_keys_are_accepted(key: str):
    assert build_filter(meta={key: 1}) == f'meta["{key}"] == 1'


@pytest.mark.parametrize("key", [
    'colour"] == "red" or meta["x', "a b", "1abc", "-a", "", "k.x", "x" * 65, "ключ", "a\n", "a\x00", 'a"', 3, None,
])
def test_bad_keys_are_refused(key):
    with pytest.raises(ConfigError, match="letters, digits"):
        build_filter(meta={key: "x"})


def test_key_count_bound():
    at_limit = {f"k{i}": i for i in range(MAX_FILTER_KEYS)}
    assert build_filter(meta=at_limit).count(" and ") == MAX_FILTER_KEYS - 1
    with pytest.raises(ConfigError, match=f"at most {MAX_FILTER_KEYS}"):
        build_filter(meta={**at_limit, "one_more": 0})


# --- build_filter: values ------------------------------------------------------------------


def test_values_per_key_bound():
    assert build_filter(meta={"n": list(range(MAX_FILTER_VALUES))}).count(" or ") == MAX_FILTER_VALUES - 1
    with pytest.raises(ConfigError, match=f"at most {MAX_FILTER_VALUES}"):
        build_filter(meta={"n": list(range(MAX_FILTER_VALUES + 1))})


@pytest.mark.parametrize("empty", [[], ()])
def test_an_empty_list_is_refused(empty):
    with pytest.raises(ConfigError, match="empty list"):
        build_filter(meta={"k": empty})


@pytest.mark.parametrize("value", [
    {"a": 1}, None, b"bytes", [{"a": 1}], [[1]], [None], object(), math.nan, [math.inf], 2 ** 63, ["ok", "bad\x01"],
    "x" * (MAX_FILTER_STRING + 1),
])
def test_bad_meta_values_are_refused(value):
    with pytest.raises(ConfigError):
        build_filter(meta={"k": value})


@pytest.mark.parametrize("field", ["tenant", "subject"])
@pytest.mark.parametrize("value", ["x" * (MAX_FILTER_STRING + 1), "a\x1fb", math.nan, b"bytes", ["t"]])
def test_tenant_and_subject_are_bounded_like_values(field: str, value):
    with pytest.raises(ConfigError):
        build_filter(**{field: value})
