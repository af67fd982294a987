"""The stored record of a job: Job.decode gives back every field Job.encode stored.

Job.decode sets the instance's fields as one dict, not through the dataclass's __init__
(it runs once per delivery): a field added to Job and forgotten there would be missing
from every decoded job. These tests fail then."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from app.jobs.durations import format_ms
from app.jobs.errors import ApiError
from app.jobs.model import RECORD_FIELDS, CatchUp, FailureKind, FailurePolicy, Job

EVERY_FIELD = [
    Job(app_id="shop", name="nightly", data={"a": [1, 2]}, data_text='{"a": [1,2]}',
        schedule="@every 1m", due_time="2026-11-30T01:02:03Z", repeats=7, ttl="1h",
        failure_policy=FailurePolicy(FailureKind.CONSTANT, 250, 3),
        delivery_timeout_ms=1500, catch_up=CatchUp.ALL, first_ms=1_764_464_523_000,
        expires_ms=1_764_468_123_000, replay_of="shop/nightly@0badf00d:1764464523000"),
    Job(app_id="shop", name="any", any_type="type.googleapis.com/google.protobuf.StringValue",
        any_value="CgJoaQ==", first_ms=1_764_464_523_123,
        due_time=format_ms(1_764_464_523_123), catch_up=CatchUp.SKIP),
    Job(app_id="shop", name="bare", first_ms=5),
]


@pytest.mark.parametrize("job", EVERY_FIELD, ids=lambda j: j.name)
def test_decode_gives_back_every_field(job: Job) -> None:
    decoded = Job.decode(job.app_id, job.name, job.encode())
    names = {f.name for f in dataclasses.fields(Job)}
    assert set(decoded.__dict__) == names | {"rev"}
    assert {n: getattr(decoded, n) for n in names} == {n: getattr(job, n) for n in names}
    assert decoded == job
    assert decoded.rev == job.rev


def test_decode_takes_the_record_as_text_too() -> None:
    job = EVERY_FIELD[0]
    assert Job.decode(job.app_id, job.name, job.encode().decode()) == job


@pytest.mark.parametrize("job", EVERY_FIELD, ids=lambda j: j.name)
def test_a_record_as_older_versions_stored_it_reads_as_the_same_job(job: Job) -> None:
    """Versions before 2026-12-01 stored an object of the keys RECORD_FIELDS names."""
    stored = orjson.loads(job.encode())
    assert job.name != "nightly" or len(stored) == len(RECORD_FIELDS)  # every place filled
    old = orjson.dumps({key: value for key, value in zip(RECORD_FIELDS, stored, strict=False)
                        if value is not None})
    assert Job.decode(job.app_id, job.name, old) == job


@pytest.mark.parametrize("raw", [b"[]", b'[5, null, null, null, null, null, null, null, null,'
                                        b' null, null, null, null, null, "more"]', b'["5"]'])
def test_a_record_of_another_shape_cannot_be_read(raw: bytes) -> None:
    """An array of no fields or of more than this version knows (a later version's), or a
    field of another type: the job is reported unreadable, not half read."""
    with pytest.raises(ApiError, match="cannot read"):
        Job.decode("shop", "odd", raw)


def test_format_ms_remembers_only_its_last_answer() -> None:
    seen = [format_ms(ms) for ms in (1_764_464_523_123, 1_764_464_523_123, 1_764_464_523_124,
                                     1_764_464_524_123, 1_764_464_523_123, 0, 0)]
    assert seen == ["2025-11-30T01:02:03.123Z", "2025-11-30T01:02:03.123Z",
                    "2025-11-30T01:02:03.124Z", "2025-11-30T01:02:04.123Z",
                    "2025-11-30T01:02:03.123Z", "1970-01-01T00:00:00.000Z",
                    "1970-01-01T00:00:00.000Z"]
