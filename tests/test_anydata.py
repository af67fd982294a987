"""Protobuf Any packing and the delivery body (no Redis)."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from google.protobuf import any_pb2, json_format, struct_pb2, wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from app.jobs import errors
from app.jobs.anydata import (
    MAX_DATA_DEPTH,
    any_json_or_bytes,
    delivery_body,
    is_any_json,
    pack_any,
    unpack_any_json,
)
from app.jobs.errors import ApiError
from app.jobs.model import Job
from app.jobs.validation import parse_job_request

WKT = "type.googleapis.com/google.protobuf."
SEED_DATA = {"@type": WKT + "StringValue", "value": "R2-D2:Oil Change"}
SEED_VALUE = "ChBSMi1EMjpPaWwgQ2hhbmdl"
SEED_ENVELOPE = (
    b'{"type_url":"type.googleapis.com/google.protobuf.StringValue",'
    b'"value":"ChBSMi1EMjpPaWwgQ2hhbmdl"}'
)


def any_job(data: dict[str, Any]) -> Job:
    any_type, any_value = pack_any(data)
    return Job("job-service", "j", any_type=any_type, any_value=any_value)


def plain_job(data: Any) -> Job:
    return Job("job-service", "j", data=data)


# --- is_any_json ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (SEED_DATA, True),
        ({"@type": ""}, True),
        ({"@type": 5, "value": 1}, False),
        ({"type": WKT + "StringValue"}, False),
        ("someData", False),
        (123, False),
        ([SEED_DATA], False),
        (None, False),
    ],
)
def test_is_any_json(data: object, expected: bool) -> None:
    assert is_any_json(data) is expected


# --- pack_any -----------------------------------------------------------------------


def test_seed_packs_to_the_seed_value() -> None:
    assert pack_any(SEED_DATA) == (WKT + "StringValue", SEED_VALUE)


def test_seed_value_is_the_serialized_string_value() -> None:
    raw = base64.b64decode(SEED_VALUE)
    # Field 1, length-delimited (0x0a), 16 bytes (0x10), then the text.
    assert raw == b"\x0a\x10R2-D2:Oil Change"
    assert wrappers_pb2.StringValue.FromString(raw).value == "R2-D2:Oil Change"


def test_pack_uses_standard_base64_with_padding() -> None:
    _, value = pack_any({"@type": WKT + "StringValue", "value": "ab"})
    assert value == "CgJhYg=="  # 4 bytes: padded, standard alphabet
    _, value = pack_any(
        {"@type": WKT + "BytesValue", "value": base64.b64encode(b"\xfb\xff").decode()}
    )
    assert "+" in value or "/" in value  # standard, not URL-safe, alphabet


def test_pack_keeps_the_type_url_as_given() -> None:
    assert pack_any({"@type": "google.protobuf.StringValue", "value": "x"})[0] == (
        "google.protobuf.StringValue"
    )


ROUND_TRIPS: list[dict[str, Any]] = [
    SEED_DATA,
    {"@type": WKT + "StringValue", "value": ""},
    {"@type": WKT + "StringValue", "value": "héllo ✓ \n"},
    {"@type": WKT + "Int64Value", "value": "-9223372036854775808"},
    {"@type": WKT + "UInt64Value", "value": "18446744073709551615"},
    {"@type": WKT + "Int32Value", "value": 7},
    {"@type": WKT + "UInt32Value", "value": 4294967295},
    {"@type": WKT + "DoubleValue", "value": 2.5},
    {"@type": WKT + "BoolValue", "value": True},
    {"@type": WKT + "BoolValue", "value": False},
    {"@type": WKT + "BytesValue", "value": base64.b64encode(b"\x00\x01\xfe\xff").decode()},
    {"@type": WKT + "Struct", "value": {"droid": "R2-D2", "tasks": ["oil", 2.0, None, True]}},
    {"@type": WKT + "Value", "value": {"a": [1.0, {"b": "c"}]}},
    {"@type": WKT + "ListValue", "value": [1.0, "two", {"three": 3.0}]},
    {"@type": WKT + "Timestamp", "value": "2024-06-01T12:30:00Z"},
    {"@type": WKT + "Timestamp", "value": "2024-06-01T12:30:00.250Z"},
    {"@type": WKT + "Duration", "value": "3s"},
    {"@type": WKT + "Duration", "value": "-1.500s"},
    {"@type": WKT + "Empty"},  # a plain message: its fields (none) inline
    {"@type": WKT + "FieldMask", "value": "a.b,cD"},
    {"@type": WKT + "Any", "value": SEED_DATA},
]


@pytest.mark.parametrize("data", ROUND_TRIPS, ids=lambda d: d["@type"].rsplit(".", 1)[-1])
def test_round_trip(data: dict[str, Any]) -> None:
    type_url, value = pack_any(data)
    assert type_url == data["@type"]
    assert unpack_any_json(type_url, value) == data


def test_round_trip_gives_the_canonical_json_form() -> None:
    # proto3 JSON writes 64-bit integers as strings: 5 comes back as "5".
    type_url, value = pack_any({"@type": WKT + "Int64Value", "value": 5})
    assert unpack_any_json(type_url, value) == {"@type": WKT + "Int64Value", "value": "5"}


def test_pack_matches_protobuf_serialization() -> None:
    _, value = pack_any({"@type": WKT + "Struct", "value": {"k": "v"}})
    expected = json_format.ParseDict({"k": "v"}, struct_pb2.Struct()).SerializeToString()
    assert base64.b64decode(value) == expected


@pytest.mark.parametrize(
    "type_url",
    [
        "type.googleapis.com/example.Droid",
        "type.googleapis.com/",
        "",
        "nonsense",
    ],
)
def test_unknown_type_is_a_400_naming_it(type_url: str) -> None:
    with pytest.raises(ApiError) as info:
        pack_any({"@type": type_url, "value": "x"})
    assert info.value.status == 400
    assert info.value.code == errors.MALFORMED_REQUEST_DATA
    if type_url.rsplit("/", 1)[-1]:
        assert type_url in info.value.message


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("Int64Value", "abc"),
        ("Int64Value", 1.5),
        ("Int32Value", True),
        ("Int32Value", None),
        ("Int32Value", [1]),
        ("UInt32Value", -1),
        ("BoolValue", "yes"),
        ("Timestamp", "not a time"),
        ("Duration", 5),
        ("Duration", "5 minutes"),
        ("BytesValue", "a"),
        ("BytesValue", 5),
        ("Struct", [1, 2]),
        ("Struct", "text"),
        ("StringValue", {"nested": 1}),
        # What json_format reads and protojson (Dapr's) refuses: read as 1.0, 1, 1s.
        ("DoubleValue", True),
        ("FloatValue", False),
        ("DoubleValue", " 1"),
        ("Int64Value", "1 "),
        ("Duration", "1.0000000001s"),
    ],
)
def test_value_that_does_not_fit_the_type_is_a_400(type_name: str, value: Any) -> None:
    with pytest.raises(ApiError) as info:
        pack_any({"@type": WKT + type_name, "value": value})
    assert info.value.status == 400
    assert info.value.code == errors.MALFORMED_REQUEST_DATA
    assert type_name in info.value.message


@pytest.mark.parametrize("type_name", ["DoubleValue", "FloatValue", "Value"])
def test_zero_and_negative_zero_pack_apart_whichever_comes_first(type_name: str) -> None:
    """The cache of packed values keys floats by their bits: 0.0 == -0.0 in Python."""
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        for zero in (first, second):
            packed = pack_any({"@type": WKT + type_name, "value": zero})
            back = unpack_any_json(*packed)["value"]
            assert back == 0 and math.copysign(1, back) == math.copysign(1, zero), back


def test_missing_value_is_a_400() -> None:
    with pytest.raises(ApiError) as info:
        pack_any({"@type": WKT + "StringValue"})
    assert info.value.status == 400
    assert "StringValue" in info.value.message


def test_too_deep_any_is_a_400_not_a_crash() -> None:
    value: Any = 1.0
    for _ in range(500):
        value = [value]
    with pytest.raises(ApiError) as info:
        pack_any({"@type": WKT + "Value", "value": value})
    assert info.value.status == 400


def test_unpack_of_corrupt_bytes_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        unpack_any_json(WKT + "StringValue", "not base64!")
    with pytest.raises(ValueError):
        unpack_any_json(WKT + "StringValue", base64.b64encode(b"\xff\xff\xff").decode())


# --- delivery_body -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["auto", "envelope"])
def test_seed_is_delivered_as_the_envelope(fmt: str) -> None:
    assert delivery_body(any_job(SEED_DATA), fmt) == SEED_ENVELOPE


def test_seed_envelope_decodes_like_the_seed_handler() -> None:
    body = orjson.loads(delivery_body(any_job(SEED_DATA), "auto"))
    decoded = base64.b64decode(body["value"]).decode()
    # The seed strips "\n" and splits on ":" (the 0x10 length byte stays on the droid).
    droid, task = decoded.replace("\n", "").split(":")
    assert droid.endswith("R2-D2")
    assert task == "Oil Change"


def test_auto_any_does_not_touch_json_format(monkeypatch: pytest.MonkeyPatch) -> None:
    job = any_job(SEED_DATA)

    def forbidden(*_: Any, **__: Any) -> Any:
        raise AssertionError("json_format called on the delivery hot path")

    monkeypatch.setattr(json_format, "ParseDict", forbidden)
    monkeypatch.setattr(json_format, "MessageToDict", forbidden)
    assert delivery_body(job, "auto") == SEED_ENVELOPE


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("someData", b'"someData"'),
        (123, b"123"),
        (1.5, b"1.5"),
        (True, b"true"),
        ({"droid": "R2-D2", "n": [1, 2]}, b'{"droid":"R2-D2","n":[1,2]}'),
        ([], b"[]"),
        ("héllo", '"héllo"'.encode()),
    ],
)
@pytest.mark.parametrize("fmt", ["auto", "raw"])
def test_plain_data_is_delivered_raw(data: Any, expected: bytes, fmt: str) -> None:
    assert delivery_body(plain_job(data), fmt) == expected


@pytest.mark.parametrize("fmt", ["auto", "envelope", "raw"])
def test_no_data_is_an_empty_body(fmt: str) -> None:
    assert delivery_body(plain_job(None), fmt) == b""


def test_raw_any_is_its_json_form() -> None:
    assert orjson.loads(delivery_body(any_job(SEED_DATA), "raw")) == SEED_DATA


def test_envelope_packs_a_string_as_string_value() -> None:
    body = orjson.loads(delivery_body(plain_job("R2-D2:Oil Change"), "envelope"))
    assert body == {"type_url": WKT + "StringValue", "value": SEED_VALUE}


@pytest.mark.parametrize("data", [123, 1.5, True, {"a": [1, "b", None]}, [1, 2], {}])
def test_envelope_packs_other_json_as_value(data: Any) -> None:
    body = orjson.loads(delivery_body(plain_job(data), "envelope"))
    assert body["type_url"] == WKT + "Value"
    value = struct_pb2.Value.FromString(base64.b64decode(body["value"]))
    assert json_format.MessageToDict(value) == data


def test_envelope_packs_data_as_deep_as_validation_allows() -> None:
    data: Any = {"k": "leaf"}
    for _ in range(MAX_DATA_DEPTH - 1):
        data = [data]
    body = orjson.loads(delivery_body(plain_job(data), "envelope"))
    value = struct_pb2.Value.FromString(base64.b64decode(body["value"]))
    assert json_format.MessageToDict(value) == data
    # And as an Any given by the caller, wrapped once more.
    type_url, packed = pack_any({"@type": WKT + "Value", "value": data})
    assert unpack_any_json(type_url, packed)["value"] == data


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        delivery_body(plain_job(1), "xml")


# --- properties ------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
TYPE_NAMES = [
    "StringValue",
    "BytesValue",
    "BoolValue",
    "Int32Value",
    "Int64Value",
    "UInt32Value",
    "UInt64Value",
    "FloatValue",
    "DoubleValue",
    "Struct",
    "Value",
    "ListValue",
    "Timestamp",
    "Duration",
    "Empty",
    "FieldMask",
    "Any",
    "NoSuchType",
]


@settings(max_examples=400, deadline=None)
@given(
    type_name=st.sampled_from(TYPE_NAMES),
    value=JSON,
    extra=st.dictionaries(st.text(max_size=6), JSON, max_size=2),
)
def test_pack_any_only_ever_raises_api_error(type_name: str, value: Any, extra: Any) -> None:
    data = {**extra, "@type": WKT + type_name, "value": value}
    try:
        type_url, packed = pack_any(data)
    except ApiError as exc:
        assert exc.status == 400
        return
    # Whatever packs must unpack, and deliver in every format.
    unpack_any_json(type_url, packed)
    job = Job("a", "j", any_type=type_url, any_value=packed)
    for fmt in ("auto", "envelope", "raw"):
        delivery_body(job, fmt)


@settings(max_examples=200, deadline=None)
@given(data=JSON)
def test_plain_data_delivers_in_every_format(data: Any) -> None:
    job = plain_job(data)
    if data is None:
        assert delivery_body(job, "auto") == b""
        return
    assert orjson.loads(delivery_body(job, "auto")) == data
    assert orjson.loads(delivery_body(job, "raw")) == data
    body = orjson.loads(delivery_body(job, "envelope"))
    assert set(body) == {"type_url", "value"}


@pytest.mark.parametrize("depth", [300, 2000])  # past orjson's depth; past Python's stack
def test_anys_nested_deeper_than_json_renders_fall_back_to_their_bytes(depth: int) -> None:
    """Given over gRPC (which stores an Any's bytes as they came): a GET, the dashboard
    and a `raw` delivery answered 500 or dead-lettered the job (RecursionError)."""
    any_url = WKT + "Any"
    value = b""
    for _ in range(depth):
        value = any_pb2.Any(type_url=any_url, value=value).SerializeToString()
    stored = base64.b64encode(value).decode()
    shown = any_json_or_bytes(any_url, stored)
    assert shown["@type"] == any_url
    if depth == 2000:  # no JSON form at all: the bytes as stored
        assert shown == {"@type": any_url, "@bytes": stored}
    job = Job("job-service", "j", any_type=any_url, any_value=stored)
    assert delivery_body(job, "raw") == value.strip()  # as daprd sends an Any it cannot render


def _nested_anys(depth: int) -> bytes:
    value = b""
    for _ in range(depth):
        value = any_pb2.Any(type_url=WKT + "Any", value=value).SerializeToString()
    return value


def _nested_lists(depth: int) -> bytes:
    value = struct_pb2.Value(string_value="bottom")
    for _ in range(depth):
        value = struct_pb2.Value(list_value=struct_pb2.ListValue(values=[value]))
    return value.SerializeToString()


@pytest.mark.parametrize(("type_name", "value"), [
    *[pytest.param("Any", _nested_anys(d), id=f"anys-{d}") for d in (5, 15, 31, 40, 200)],
    *[pytest.param("Value", _nested_lists(d), id=f"lists-{d}") for d in (10, 31, 33, 40)],
])
def test_what_get_shows_of_a_nested_any_goes_back_in_as_the_same_any(
        type_name: str, value: bytes) -> None:
    """Given over gRPC, an Any may nest deeper than the API takes data: GET showed it as
    JSON all the same, which sent back (jobs export, then import) was refused, and lost."""
    type_url, stored = WKT + type_name, base64.b64encode(value).decode()
    shown = any_json_or_bytes(type_url, stored)
    job, _ = parse_job_request("j", orjson.dumps({"dueTime": "1h", "data": shown}), None,
                               "job-service", 0, 10 * 1024 * 1024)
    assert (job.any_type, job.any_value) == (type_url, stored)
