"""Errors as gRPC statuses, in the shape Dapr gives them.

Dapr answers with a status code, the message, and a google.rpc.ErrorInfo detail whose
`reason` is the error code (DAPR_SCHEDULER_JOB_NAME_EMPTY, ...), domain `dapr.io` and
the app id in its metadata (dapr/kit errors); the SDKs read it (`DaprGrpcError
.error_code()`). The code follows the HTTP status of the same error (app/jobs/errors.py),
so both APIs answer alike:

    400 INVALID_ARGUMENT   bad input (Dapr: the same for an empty name or schedule; its
                           scheduler's refusal of a bad schedule comes back INTERNAL)
    401 UNAUTHENTICATED    missing or wrong dapr-api-token (as Dapr)
    404 NOT_FOUND          GetJob of an unknown job (Dapr: INTERNAL, wrapping its
                           scheduler's NotFound, "failed to get job due to: ...")
    409 ALREADY_EXISTS     the name exists and overwrite is false (as Dapr)
    413 RESOURCE_EXHAUSTED data over JOBRUNNER_MAX_DATA_BYTES (gRPC's own code for a
                           message over the limit)
    429 RESOURCE_EXHAUSTED the app holds as many jobs as JOBRUNNER_APP_MAX_JOBS lets it
    503 UNAVAILABLE        Redis unreachable (Dapr waits for its scheduler, then
                           DEADLINE_EXCEEDED)
    else INTERNAL
"""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from app.jobs.errors import ApiError

DOMAIN = "dapr.io"

_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    404: code_pb2.NOT_FOUND,
    409: code_pb2.ALREADY_EXISTS,
    413: code_pb2.RESOURCE_EXHAUSTED,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}


def status_for(exc: ApiError, app_id: str) -> Any:
    """The grpc.Status for an ApiError (for context.abort_with_status)."""
    info = error_details_pb2.ErrorInfo(
        reason=exc.code, domain=DOMAIN, metadata={"appID": app_id, "namespace": ""}
    )
    status = status_pb2.Status(
        code=_CODES.get(exc.status, code_pb2.INTERNAL), message=exc.message
    )
    status.details.add().Pack(info)
    return rpc_status.to_status(status)
