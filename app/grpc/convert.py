"""Dapr's jobs messages (dapr.proto.runtime.v1) <-> what the domain takes and keeps.

A ScheduleJobRequest becomes the fields an HTTP body would hold, by their JSON names,
so that app.jobs.validation checks both APIs with the same code; its data stays the
protobuf Any it is (kept as given). A stored job becomes Dapr's Job message as Dapr's
GetJob answers it: data as an Any (anydata.job_data_as_any), the default failure
policy when none was given.
"""

from __future__ import annotations

from typing import Any

from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import jobs_pb2
from google.protobuf import duration_pb2

from app.jobs.anydata import job_data_as_any
from app.jobs.model import FailureKind, FailurePolicy, Job

NS_PER_MS = 1_000_000


def request_fields(request: jobs_pb2.ScheduleJobRequest) -> dict[str, Any]:
    """The HTTP body's fields for a ScheduleJobRequest (its data aside: request_data)."""
    job = request.job
    fields: dict[str, Any] = {}
    if job.HasField("schedule"):
        fields["schedule"] = job.schedule
    if job.HasField("due_time"):
        fields["dueTime"] = job.due_time
    if job.HasField("ttl"):
        fields["ttl"] = job.ttl
    if job.HasField("repeats"):
        fields["repeats"] = job.repeats
    if request.overwrite:
        fields["overwrite"] = True
    if job.HasField("failure_policy"):
        fields["failurePolicy"] = _policy_fields(job.failure_policy)
    return fields


def request_data(request: jobs_pb2.ScheduleJobRequest) -> tuple[str, bytes] | None:
    """The data as (type URL, bytes), or None when the request has none."""
    if not request.job.HasField("data"):
        return None
    return request.job.data.type_url, request.job.data.value


def _policy_fields(policy: common_pb2.JobFailurePolicy) -> dict[str, Any]:
    kind = policy.WhichOneof("policy")
    if kind == "drop":
        return {"drop": {}}
    if kind != "constant":
        return {}  # no policy chosen: the default, as `{}` over HTTP
    constant: dict[str, Any] = {}
    if policy.constant.HasField("interval"):
        interval = policy.constant.interval
        # A Go duration in nanoseconds: validation reads it (and refuses a negative one)
        # exactly as it reads the HTTP body's interval.
        constant["interval"] = f"{interval.seconds * 1_000_000_000 + interval.nanos}ns"
    if policy.constant.HasField("max_retries"):
        constant["maxRetries"] = policy.constant.max_retries
    return {"constant": constant}


def job_message(job: Job) -> jobs_pb2.Job:
    """A stored job as Dapr's Job message (GetJob, ListJobs)."""
    message = jobs_pb2.Job(name=job.name)
    if job.schedule is not None:
        message.schedule = job.schedule
    if job.repeats is not None:
        message.repeats = job.repeats
    if job.due_time is not None:
        message.due_time = job.due_time
    if job.ttl is not None:
        message.ttl = job.ttl
    data = job_data_as_any(job)
    if data is not None:
        message.data.CopyFrom(data)
    message.failure_policy.CopyFrom(policy_message(job.failure_policy))
    return message


def policy_message(policy: FailurePolicy) -> common_pb2.JobFailurePolicy:
    if policy.kind is FailureKind.DROP:
        return common_pb2.JobFailurePolicy(drop=common_pb2.JobFailurePolicyDrop())
    interval = duration_pb2.Duration()
    interval.FromNanoseconds(policy.interval_ms * NS_PER_MS)
    constant = common_pb2.JobFailurePolicyConstant(interval=interval)
    if policy.max_retries is not None:
        constant.max_retries = policy.max_retries
    return common_pb2.JobFailurePolicy(constant=constant)
