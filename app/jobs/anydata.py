"""Job data as a protobuf Any, and the exact body a worker POSTs to the app.

Data that is a protobuf Any in its JSON form (`{"@type": "type.googleapis.com/
google.protobuf.StringValue", "value": "R2-D2:Oil Change"}`) is packed once,
when the job is scheduled, into its type URL and the standard base64 (with
padding) of the serialized inner message. Delivery then only has to put those
two strings into `{"type_url": ..., "value": ...}`, the shape the seed's
handler reads; no protobuf work happens on that hot path.

Only types in the default descriptor pool can be packed: the well-known
`google.protobuf` types imported below. Anything else is a 400.

Delivery formats (Settings.delivery_format):
- auto: Any data as the envelope; other data as its raw JSON; no data, an
  empty body.
- envelope: Any data as the envelope; other data is packed first: a JSON
  string as google.protobuf.StringValue, any other JSON value as
  google.protobuf.Value (the type Dapr itself wraps HTTP job data in); no
  data, an empty body (there is nothing to pack).
- raw: Any data as its JSON form (`{"@type": ..., ...}`); other data as its
  raw JSON; no data, an empty body.
- dapr (the app runs with Settings.dapr_compat, not a JOBRUNNER_DELIVERY_FORMAT
  value): as Dapr 1.14.3+ delivers (dapr_body). Such an app's HTTP data is never
  packed: it is kept as the JSON text given (Job.data_text), any `@type` and any
  extra fields included, and delivered byte for byte.

Differences from Dapr, without the switch: Dapr (1.14.3+) reads all HTTP job data
into a google.protobuf.Value and delivers it as JSON, so an `@type` object arrives
as that object; design.md asks for the `{type_url, value}` envelope instead, which
is what the seed's handler decodes (Dapr 1.14.0-1.14.2 delivered that). Dapr
accepts any `@type`; we refuse types we cannot serialize.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

# The *_pb2 imports register the well-known types in the default descriptor
# pool, which is where json_format looks up an Any's `@type`.
from google.protobuf import (  # noqa: F401
    any_pb2,
    api_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    source_context_pb2,
    struct_pb2,
    timestamp_pb2,
    type_pb2,
    wrappers_pb2,
)
from google.protobuf.message import DecodeError

from app.jobs.errors import ApiError, JobrunnerError, malformed_data, payload_too_large, shown
from app.jobs.model import Job
from app.jobs.sizedcache import SizedCache, text_size

# Deepest nesting of JSON arrays/objects accepted in job data (validation
# checks it). A Struct/Value takes two protobuf levels per JSON level, and
# protobuf decoders stop at 100 levels by default (Python's upb, Java), as
# does json_format; 32 leaves room for the Any around it, so whatever we
# accept can be packed here and decoded by the app.
MAX_DATA_DEPTH = 32
_RECURSION_DEPTH = 100  # json_format's default, made explicit

# How data goes out: `auto` (Any as envelope, other JSON raw), or one of the two forced.
DELIVERY_FORMATS = ("auto", "envelope", "raw")
# The format of an app in Dapr compatibility mode (its registration carries it).
DAPR_FORMAT = "dapr"

_STRING_VALUE_URL = "type.googleapis.com/google.protobuf.StringValue"
_VALUE_URL = "type.googleapis.com/google.protobuf.Value"

# json_format answers bad input with ParseError, but also with TypeError,
# KeyError, ... depending on where the input stops fitting the type.
_PARSE_FAILURES = (
    json_format.ParseError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
)


def is_any_json(data: object) -> bool:
    """Whether `data` is a protobuf Any in JSON form: an object with a string `@type`."""
    return isinstance(data, dict) and isinstance(data.get("@type"), str)


# Well-known types whose JSON form inside an Any is {"@type": ..., "value": ...}.
_VALUE_FORM_TYPES = frozenset(
    f"google.protobuf.{name}" for name in (
        "DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value", "UInt32Value",
        "BoolValue", "StringValue", "BytesValue", "Struct", "Value", "ListValue", "Timestamp",
        "Duration", "FieldMask", "Any",
    )
)


# The cache of packed scalar Anys (pack_any) holds at most this much; a value longer
# than _PACK_CACHE_ITEM_CHARS is packed each time (and never hashed for a look-up).
PACK_CACHE_BYTES = 2 * 1024 * 1024
_PACK_CACHE_ITEM_CHARS = 1024
_packed: SizedCache[tuple[str, str, str | int], tuple[str, str]] = SizedCache(
    PACK_CACHE_BYTES, 8 * _PACK_CACHE_ITEM_CHARS)


def pack_any(data: dict[str, Any]) -> tuple[str, str]:
    """A JSON-form Any -> (type URL, standard base64 of the serialized inner message)."""
    value, type_url = data.get("value"), data.get("@type")
    if (len(data) == 2 and isinstance(type_url, str) and isinstance(value, str | int | float)
            and len(type_url) + (len(value) if isinstance(value, str) else 0)
            <= _PACK_CACHE_ITEM_CHARS):
        # The common case (a wrapper type around a short scalar) is cached: the schedule
        # endpoint's hot path, and jobs often share their data. The kind keeps True and 1
        # (equal as dict keys) apart.
        # A float by its hex form: 0.0 and -0.0 are equal keys, and pack differently.
        key = (type_url, type(value).__name__,
               value.hex() if isinstance(value, float) else value)
        found = _packed.get(key)
        if found is None:
            found = _pack(data)
            _packed.put(key, found, text_size(type_url, str(value), *found))
        return found
    return _pack(data)


def _pack(data: dict[str, Any]) -> tuple[str, str]:
    """A JSON-form Any -> (type URL, standard base64 of the serialized inner message).

    Raises ApiError 400 (ERR_MALFORMED_REQUEST_DATA) when the type is unknown or
    the value does not fit it.
    """
    type_url = data.get("@type")
    if not isinstance(type_url, str) or not type_url.rsplit("/", 1)[-1]:
        raise malformed_data("`@type` must name a protobuf type")
    if not type_url.rsplit("/", 1)[-1].startswith("google.protobuf."):
        # Only the well-known types, whatever else this process happens to have loaded
        # (the gRPC API loads Dapr's own messages): the answer must not depend on it.
        raise malformed_data(
            f"unknown type {shown(type_url)}: only the protobuf well-known types are accepted "
            "(--dapr-compat accepts any type)")
    extra = set(data) - {"@type", "value"}
    if type_url.rsplit("/", 1)[-1] in _VALUE_FORM_TYPES and extra:
        # json_format would drop them silently; the caller would lose data.
        some = ", ".join(shown(k, 40) for k in sorted(extra)[:5])
        raise malformed_data(f"{shown(type_url)} takes only `value`; unexpected field(s): "
                             f"{some}{', ...' if len(extra) > 5 else ''}")
    _check_bytes_values(data)
    _check_scalar(type_url.rsplit("/", 1)[-1], data.get("value"))
    message = any_pb2.Any()
    try:
        json_format.ParseDict(data, message, max_recursion_depth=_RECURSION_DEPTH)
    except _PARSE_FAILURES as exc:
        raise _pack_error(type_url, exc) from None
    return message.type_url, base64.b64encode(message.value).decode("ascii")


_BYTES_VALUE = "google.protobuf.BytesValue"
_NUMBER_VALUES = frozenset(f"google.protobuf.{name}" for name in (
    "DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value", "UInt32Value"))
# More fractional digits than protojson's (Go's) Duration takes: nine at most.
_FINER_THAN_NS = re.compile(r"\.[0-9]{10}")


def _check_scalar(type_name: str, value: Any) -> None:
    """What json_format takes and protojson (Dapr's) refuses, refused here too: a number
    type's value as true/false or as a string with spaces around the number (read as
    1.0, 1), and a Duration finer than a nanosecond (cut to fit)."""
    if type_name in _NUMBER_VALUES and (
            isinstance(value, bool) or (isinstance(value, str) and value != value.strip())):
        raise malformed_data(f"value does not fit protobuf type {type_name!r}: "
                             f"{shown(str(value).lower() if isinstance(value, bool) else value)}"
                             " is not a number")
    if (type_name == "google.protobuf.Duration" and isinstance(value, str)
            and _FINER_THAN_NS.search(value)):
        raise malformed_data(f"value does not fit protobuf type {type_name!r}: {shown(value)} "
                             "has more than 9 fractional digits")


# Types whose JSON form is free JSON: an `@type` inside them is data, not an Any.
_FREE_JSON_TYPES = frozenset(
    f"google.protobuf.{name}" for name in ("Struct", "Value", "ListValue"))


def _check_bytes_values(node: Any) -> None:
    """Refuse a BytesValue whose base64 does not decode, wherever an Any holds one (the top,
    an Any in an Any, the options of a Type). json_format decodes bytes leniently: it drops
    what is not base64, so `"!!!"` would be stored as no bytes at all."""
    if isinstance(node, list):
        for item in node:
            _check_bytes_values(item)
        return
    if not isinstance(node, dict):
        return
    type_name = node.get("@type")
    if isinstance(type_name, str):
        type_name = type_name.rsplit("/", 1)[-1]
        if type_name == _BYTES_VALUE:
            value = node.get("value")
            if isinstance(value, str) and not valid_base64(value):
                raise malformed_data(
                    f"value does not fit protobuf type {_BYTES_VALUE!r}: {shown(value)} is "
                    "not base64 (standard or URL-safe, padded or not)")
            return
        if type_name in _FREE_JSON_TYPES:
            return
    for key, child in node.items():
        if key != "@type":
            _check_bytes_values(child)


_STD_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URL_B64 = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def valid_base64(text: str) -> bool:
    """Whether protojson (Go) reads `text` as bytes: standard base64, or URL-safe when it
    has `-` or `_`; padded, or unpadded when its length is not a multiple of 4; CR and LF
    ignored."""
    text = text.replace("\r", "").replace("\n", "")
    url = "-" in text or "_" in text
    if not (_URL_B64 if url else _STD_B64).fullmatch(text):
        return False
    if len(text) % 4:
        if "=" in text:
            return False
        text += "=" * (-len(text) % 4)
    try:
        base64.b64decode(text, altchars=b"-_" if url else None, validate=True)
    except binascii.Error:
        return False
    return True


def _pack_error(type_url: str, exc: BaseException) -> ApiError:
    if "Can not find message descriptor" in str(exc):
        return malformed_data(
            f"unknown protobuf type {shown(type_url)} in `@type`; "
            "only the well-known google.protobuf types are supported"
        )
    if isinstance(exc, KeyError):
        detail = f"missing field {exc}"
    elif isinstance(exc, RecursionError):
        detail = "nested too deeply"
    else:
        detail = str(exc)
    return malformed_data(f"value does not fit protobuf type {shown(type_url)}: {detail[:200]}")


def unpack_any_json(type_url: str, value_b64: str) -> dict[str, Any]:
    """(type URL, base64 message) -> the Any's JSON form, with `@type`.

    Raises ValueError when the stored bytes do not decode as that type (they
    were packed by pack_any, so this means a corrupt record).
    """
    message = any_pb2.Any(type_url=type_url)
    try:
        message.value = base64.b64decode(value_b64, validate=True)
        result: dict[str, Any] = json_format.MessageToDict(message)
    except (binascii.Error, DecodeError, json_format.Error, TypeError, ValueError,
            RecursionError) as exc:  # RecursionError: Anys nested in Anys, given over gRPC
        raise ValueError(
            f"stored protobuf Any of type {type_url!r} does not decode: {exc}"
        ) from exc
    return result


class UndeliverableData(JobrunnerError, ValueError):
    """Data the job's delivery format has no body for: a google.protobuf.Value Any (given
    over gRPC, or in its bytes form) with no JSON form where the body is that JSON."""


def renders_value(job: Job, fmt: str | None) -> bool:
    """Whether delivering the job renders a google.protobuf.Value Any as JSON (`fmt`: the
    app's body format, Settings.body_format). Checking that it can takes up to 0.1 s for
    a large Value: never on an event loop that serves other calls."""
    return job.any_type == _VALUE_URL and fmt in (DAPR_FORMAT, "raw")


def check_deliverable(job: Job, fmt: str | None) -> None:
    """ApiError 400 at schedule time for data this app's body format (`fmt`) could never
    deliver (UndeliverableData): every trigger would be dead-lettered."""
    if renders_value(job, fmt):
        assert fmt is not None
        try:
            delivery_body(job, fmt)
        except UndeliverableData as exc:
            raise malformed_data(str(exc)) from None


def delivery_body(job: Job, fmt: str) -> bytes:
    """The exact HTTP body a worker POSTs to `{app}/job/{name}` for this job."""
    if fmt == DAPR_FORMAT:
        return dapr_body(job)
    if fmt not in DELIVERY_FORMATS:
        raise ValueError(f"unknown delivery format {fmt!r}")
    if job.any_type is not None:
        if fmt == "raw":
            if _known_type(job.any_type):
                try:
                    return orjson.dumps(unpack_any_json(job.any_type, job.any_value or ""))
                except (ValueError, TypeError):  # nested past what JSON renders here
                    pass
            # given over gRPC, with no JSON form here: as daprd sends such an Any
            return _dapr_any_body(job.any_type, job.any_value or "")
        return _envelope(job.any_type, job.any_value or "")
    if job.data is None:
        return b""
    if fmt == "envelope":
        return _envelope(*_pack_plain(job.data))
    return orjson.dumps(job.data)


def dapr_body(job: Job) -> bytes:
    """The body Dapr (1.14.3+) POSTs for this job (pkg/channel/http, constructJobRequest):
    data scheduled over HTTP as it was scheduled, byte for byte (Dapr re-marshals its
    google.protobuf.Value, which gives the same JSON value); a stored Any (given over
    gRPC) as Dapr renders it (_dapr_any_body); no data, an empty body."""
    if job.data_text is not None:
        return job.data_text.encode()
    if job.any_type is not None:
        return _dapr_any_body(job.any_type, job.any_value or "")
    if job.data is None:
        return b""
    return orjson.dumps(job.data)  # the text as given: Job keeps only compact texts so


def dapr_get_data(job: Job, max_json_bytes: int | None = None) -> Any:
    """The job's `data` in a GET answer as Dapr 1.15+ gives it: data scheduled over HTTP
    wrapped as the google.protobuf.Value Any it is kept in, `{"@type": ".../google.protobuf
    .Value", "value": <data>}`; a stored Any in its JSON form; None when there is none."""
    if job.any_type is not None:
        return any_json_or_bytes(job.any_type, job.any_value or "", any_type=True,
                                 max_json_bytes=max_json_bytes)
    if job.data is None and job.data_text is None:
        return None
    return {"@type": _VALUE_URL, "value": job.data}


def _dapr_any_body(type_url: str, value_b64: str) -> bytes:
    """A stored Any as Dapr's HTTP channel sends it: a google.protobuf.Value as its JSON
    (nothing when it holds no value), any other type as its value bytes, trimmed."""
    raw = base64.b64decode(value_b64)
    if type_url != _VALUE_URL:
        # Go's bytes.TrimSpace; its Unicode spaces beyond ASCII (U+0085, U+00A0) aside.
        return raw.strip()
    value = struct_pb2.Value()
    try:
        value.ParseFromString(raw)
        if value.WhichOneof("kind") is None:
            return b""
        # protojson: map keys sorted, integral doubles without a fraction.
        return orjson.dumps(_go_numbers(json_format.MessageToDict(value)),
                            option=orjson.OPT_SORT_KEYS)
    except (DecodeError, ValueError, RecursionError, orjson.JSONEncodeError) as exc:
        # NaN or infinity, a string that is not UTF-8, nested past protobuf's limit
        raise UndeliverableData(f"a google.protobuf.Value with no JSON form to deliver as "
                                f"the body ({type(exc).__name__}: {shown(str(exc))})") from exc


def _go_numbers(node: Any) -> Any:
    if isinstance(node, float) and node.is_integer() and abs(node) < 2**63:
        return int(node)
    if isinstance(node, dict):
        return {k: _go_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_go_numbers(v) for v in node]
    return node


def _known_type(type_url: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    except KeyError:
        return False
    return True


def _envelope(type_url: str, value_b64: str) -> bytes:
    return orjson.dumps({"type_url": type_url, "value": value_b64})


def _pack_plain(data: Any) -> tuple[str, str]:
    """Non-Any JSON data as an Any: a string as StringValue, the rest as Value."""
    if isinstance(data, str):
        raw = wrappers_pb2.StringValue(value=data).SerializeToString()
        return _STRING_VALUE_URL, base64.b64encode(raw).decode("ascii")
    value = struct_pb2.Value()
    # Accepted data is plain JSON no deeper than MAX_DATA_DEPTH: it always fits a Value.
    json_format.ParseDict(data, value, max_recursion_depth=_RECURSION_DEPTH)
    return _VALUE_URL, base64.b64encode(value.SerializeToString()).decode("ascii")


# --- data as Dapr keeps it: a protobuf Any (the gRPC API, gRPC delivery) ------------
#
# Dapr stores every job's data as a google.protobuf.Any. Over gRPC the caller gives
# the Any (of any type, or none) and gets it back as given. Over HTTP the body's
# `data` is read into a google.protobuf.Value and packed into an Any
# (pkg/api/universal/jobs.go, ScheduleJobAlpha1HTTP: `anypb.New(job.GetData())`,
# Dapr 1.15+), so plain JSON data scheduled over HTTP reads back over gRPC as an Any
# of type google.protobuf.Value. An `@type` object scheduled over HTTP is kept as the
# Any it names (see the module docstring), and reads back as that Any.

MAX_TYPE_URL_LENGTH = 2048
# What an Any's JSON holds beside its bytes' base64: `{"@type": <url>, "@bytes": ...}`.
ANY_ENVELOPE_BYTES = MAX_TYPE_URL_LENGTH + 64
# protobuf's Any: `[prefix]/full.type.Name`. The prefix must not start with "~" (the
# job record's mark for a shortened well-known type URL, app/jobs/model.py).
_TYPE_URL = re.compile(
    r"(?:[^\s/~\x00-\x1f\x7f][^\s\x00-\x1f\x7f]*)?/[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
)


def job_data_as_any(job: Job) -> any_pb2.Any | None:
    """The job's data as the protobuf Any Dapr keeps and hands out over gRPC (GetJob,
    ListJobs, OnJobEvent); None when the job has no data."""
    if job.any_type is not None:
        return any_pb2.Any(type_url=job.any_type, value=base64.b64decode(job.any_value or ""))
    if job.data is None and job.data_text is None:  # (`"data": null` kept as Dapr does: a
        return None                                   # Value holding null, as HTTP GET shows)
    return any_pb2.Any(type_url=_VALUE_URL, value=json_value_bytes(job.data))


def json_value_bytes(data: Any) -> bytes:
    """Plain JSON data as a serialized google.protobuf.Value (numbers become doubles, as
    in protojson). Accepted job data is never deeper than MAX_DATA_DEPTH, so it fits."""
    value = struct_pb2.Value()
    json_format.ParseDict(data, value, max_recursion_depth=_RECURSION_DEPTH)
    return value.SerializeToString()


def stored_any(type_url: str, value: bytes, max_data_bytes: int) -> tuple[str, str] | None:
    """An Any given over gRPC -> (type URL, standard base64 of `value`) as the job record
    keeps it, or None for an empty Any (no type URL, no bytes: the SDKs send it for "no
    data"). The bytes are kept as given, not decoded: the type may be any message, also
    one no descriptor here knows, and a type URL may be empty (the Python SDK's own
    example sends JSON bytes that way).

    Raises ApiError 400 (ERR_MALFORMED_REQUEST_DATA) for a type URL that is not one, and
    413 when the base64 is longer than `max_data_bytes` (the limit the HTTP API applies to
    the base64 of an Any)."""
    if not type_url and not value:
        return None
    if len(type_url) > MAX_TYPE_URL_LENGTH:
        raise malformed_data(f"the Any's type URL is longer than {MAX_TYPE_URL_LENGTH} characters")
    if type_url and not _TYPE_URL.fullmatch(type_url):
        raise malformed_data(
            f"{type_url[:80]!r} is not a protobuf type URL (`prefix/full.type.Name`)"
        )
    encoded = base64.b64encode(value).decode("ascii")
    if len(encoded) > max_data_bytes:
        raise payload_too_large(len(encoded), max_data_bytes)
    return type_url, encoded


# The member of an Any's bytes form: `{"@type": ..., "@bytes": "<standard base64>"}`. Not
# "value": that is the JSON form of a wrapper or Value holding a string, and the bytes
# form sent back would be packed as that string.
BYTES_MEMBER = "@bytes"


def too_deep(data: Any, raw: bytes) -> bool:
    """Whether `data` (whose JSON text is `raw`) is nested more than MAX_DATA_DEPTH deep."""
    # Nesting cannot exceed the number of brackets: most data skips the walk.
    if raw.count(b"[") + raw.count(b"{") <= MAX_DATA_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DATA_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def any_json_or_bytes(type_url: str, value_b64: str, *, any_type: bool = False,
                      max_json_bytes: int | None = None) -> dict[str, Any]:
    """A stored Any for a JSON answer (the HTTP API's GET of a job scheduled over gRPC):
    its JSON form when sending that back stores the same Any, else its bytes form
    `{"@type": type_url, "@bytes": "<base64 of the bytes>"}`, the bytes as stored, which
    does (stored_bytes_form). So the bytes form for: a type the API would not take back as
    JSON (not a well-known type, unless `any_type`: an app in Dapr compatibility mode
    takes every type this process knows); bytes that do not decode as the type; a Value
    holding NaN, which JSON cannot write (Dapr's protojson cannot render such an Any at
    all: its GET fails with 500); fields the type does not have, which JSON would drop;
    a form deeper than the API takes data (an Any nested in Anys, given over gRPC); a
    form longer than `max_json_bytes`, the most JSON of an Any the API takes (one given
    over gRPC is measured as its bytes' base64, whose JSON form may be much longer). Each
    of these, shown as JSON, was refused or changed on `jobs export` then `import`."""
    if any_type or type_url.rsplit("/", 1)[-1].startswith("google.protobuf."):
        try:
            rendered = unpack_any_json(type_url, value_b64)
            text = orjson.dumps(rendered)
            if not too_deep(rendered, text) and \
                    (max_json_bytes is None or len(text) <= max_json_bytes) and \
                    _packs_back(rendered, type_url, value_b64):
                return rendered
        except (ValueError, orjson.JSONEncodeError):  # (orjson writes 254 levels at most)
            pass
    return {"@type": type_url, BYTES_MEMBER: value_b64}


def _packs_back(rendered: dict[str, Any], type_url: str, value_b64: str) -> bool:
    """Whether the JSON form packs back into the message the bytes hold: equal as
    messages (a map's order aside), unknown fields included. What JSON loses of a
    decodable well-known type is its unknown fields: a message without any, found in C
    (upb), needs no parse of the JSON back, which doubled the time of a list page; but
    an Any's unknown fields are inside its bytes, where that search does not go."""
    try:
        name = type_url.rsplit("/", 1)[-1]
        message_class = message_factory.GetMessageClass(
            descriptor_pool.Default().FindMessageTypeByName(name))
        kept = message_class.FromString(base64.b64decode(value_b64))
        if name not in _HOLDING_ANY:
            size = kept.ByteSize()
            kept.DiscardUnknownFields()
            return bool(kept.ByteSize() == size)
        back = any_pb2.Any()
        json_format.ParseDict(rendered, back, max_recursion_depth=_RECURSION_DEPTH)
        return bool(kept == message_class.FromString(back.value))
    except (*_PARSE_FAILURES, DecodeError):
        return False


# The well-known types that hold an Any (Option.value, and the types with options).
_HOLDING_ANY = frozenset(f"google.protobuf.{name}" for name in (
    "Any", "Option", "Type", "Field", "Enum", "EnumValue", "Api", "Method"))


def is_bytes_form(data: dict[str, Any]) -> bool:
    return BYTES_MEMBER in data


def stored_bytes_form(data: dict[str, Any], max_data_bytes: int) -> tuple[str, str] | None:
    """An Any in its bytes form -> (type URL, base64) as the job record keeps it, the bytes
    as given and the type any, as over gRPC (stored_any); None for an empty Any. ApiError
    400 when it is not `{"@type": <text>, "@bytes": <standard base64>}`."""
    raw = data.get(BYTES_MEMBER)
    if set(data) != {"@type", BYTES_MEMBER} or not isinstance(raw, str):
        raise malformed_data(f"an Any in its bytes form is {{\"@type\": ..., "
                             f"\"{BYTES_MEMBER}\": \"<base64>\"}}, and nothing else")
    try:
        value = base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise malformed_data(f"{BYTES_MEMBER} is not standard base64: {shown(raw)}") from None
    return stored_any(data["@type"], value, max_data_bytes)
