"""The jobs methods of `dapr.proto.runtime.v1.Dapr`, on the store the HTTP API uses.

Each method and its `...Alpha1` twin do the same, as in Dapr (pkg/api/universal/jobs.go).
Requests are validated by app.jobs.validation, as HTTP bodies are. Every other method of
the Dapr service answers UNIMPLEMENTED, saying that only the jobs API is served (the
server refuses them before reading a message: server.py).

The methods are coroutines of a grpc.aio server (server.py): each runs its store work on
the server's thread pool, except ScheduleJob, which is tried on the event loop first
(`_schedule_on_loop`): the same validation, then the store's script written on the
loop's own Redis connection (app/store/loop_redis.py, shared by the calls in flight), no
thread switch. Whatever else happens there (bad input, a job that exists, an error reply,
Redis away or slow, a store the loop cannot reach) the call is done again, whole, on the
pool, which answers it as it always has. A call whose reply was lost may so run the
script twice: the second run finds its own job (answered as stored) or overwrites it with
the same record, as redis-py's retries do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeAlias, TypeVar

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc, jobs_pb2

from app.grpc.convert import job_message, request_data, request_fields
from app.grpc.errors import status_for
from app.jobs import errors
from app.jobs.anydata import renders_value
from app.jobs.clock import now_ms
from app.jobs.errors import ApiError
from app.jobs.validation import MAX_NAME_LENGTH, parse_job_fields, same_request, validate_name
from app.settings import Settings
from app.store.loop_redis import LoopRedis, ReplyTimeout
from app.store.redis_client import UNAVAILABLE
from app.store.store import JobExists, Store

log = logging.getLogger("jobrunner.grpc")

# Dapr's errorcodes.SchedulerEmpty: a ScheduleJobRequest without its job.
JOB_EMPTY = "DAPR_SCHEDULER_EMPTY"
# ListJobs has no paging in Dapr's API: one answer holds every job of the app, so it is
# bounded, in jobs and in bytes; past either, the HTTP API's paged list is the way. The
# bytes: what a gRPC client takes in one message by default (4 MiB), less room for the
# answer's framing; reading stops there, so a call never holds more than that.
MAX_LISTED = 10_000
MAX_LISTED_BYTES = 4 * 1024 * 1024 - 1024
_PAGE = 1000

UNIMPLEMENTED_MESSAGE = (
    "jobrunner serves only the jobs API of Dapr (ScheduleJob, GetJob, DeleteJob, "
    "ListJobs, DeleteJobsByPrefix and their Alpha1 twins); {method} is not served"
)

JOB_METHODS = frozenset(
    name + suffix
    for name in ("ScheduleJob", "GetJob", "DeleteJob", "ListJobs", "DeleteJobsByPrefix")
    for suffix in ("", "Alpha1")
)

R = TypeVar("R")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_SCHEDULED = jobs_pb2.ScheduleJobResponse()


class JobsServicer(dapr_pb2_grpc.DaprServicer):
    def __init__(self, settings: Settings, store: Store, pool: Executor) -> None:
        self.settings = settings
        self.store = store
        self.app_id = settings.app_id
        self.pool = pool
        # Built here, connected on the server's loop at its first call; None when the
        # store's Redis cannot be reached from a loop (Cluster, a replica wait, TLS...).
        self.loop_redis = LoopRedis.for_client(store.redis)

    def close(self) -> None:
        """On the server's loop, once it has stopped."""
        if self.loop_redis is not None:
            self.loop_redis.close()

    def _outcome(self, what: str, call: Callable[[], R]) -> R | ApiError:
        """`call()`, or the error it raised as the ApiError to answer (on the pool)."""
        try:
            return call()
        except ApiError as exc:
            if exc.status == 500:  # the stored data's fault, not the caller's (as over HTTP)
                log.error("%s: %s", what, exc.message)
            return exc
        except JobExists as exc:
            return errors.job_exists(str(exc))
        except UNAVAILABLE as exc:
            return errors.redis_unavailable(str(exc) or type(exc).__name__)
        except Exception:
            log.exception("unexpected error in %s", what)
            return ApiError(500, errors.INTERNAL, "internal error; see the API log")

    async def _run(self, context: Context, what: str, call: Callable[[], R]) -> R:
        """`call()` on the pool, with every error it raises answered as a gRPC status."""
        outcome = await asyncio.get_running_loop().run_in_executor(
            self.pool, self._outcome, what, call)
        if isinstance(outcome, ApiError):
            await context.abort_with_status(status_for(outcome, self.app_id))
            raise AssertionError("abort_with_status returns only by raising")
        return outcome

    # --- ScheduleJob -----------------------------------------------------------------

    def _schedule(self, request: jobs_pb2.ScheduleJobRequest) -> jobs_pb2.ScheduleJobResponse:
        if not request.HasField("job"):
            raise ApiError(400, JOB_EMPTY, "Job is empty")
        job, overwrite = parse_job_fields(
            request.job.name, request_fields(request), request_data(request),
            self.app_id, now_ms(), self.settings.max_data_bytes,
            self.settings.body_format,
        )
        try:
            self.store.schedule(job, overwrite=overwrite)
        except JobExists:
            # A retry whose first call was stored though its answer was lost (README,
            # "Errors and retries"): answered as stored.
            stored = self.store.get(job.app_id, job.name)
            if stored is None or not same_request(stored.job, job):
                raise
        return _SCHEDULED

    async def _schedule_on_loop(self, request: jobs_pb2.ScheduleJobRequest) -> bool:
        """Whether the job was stored from the loop (module doc); False: do it all again
        on the pool."""
        client = self.loop_redis
        if client is None:
            return False
        try:
            if not request.HasField("job"):
                return False
            job, overwrite = parse_job_fields(
                request.job.name, request_fields(request), request_data(request),
                self.app_id, now_ms(), self.settings.max_data_bytes,
            )
            if renders_value(job, self.settings.body_format):
                return False  # its check, up to 0.1 s, is the pool's (not the loop's)
            # False: the job exists, or an error reply; the pool's to answer
            return await self.store.schedule_on_loop(client, job, overwrite)
        except ReplyTimeout:
            raise  # Redis said nothing for the socket timeout: the pool would wait as long
        except Exception:  # the pool's to answer: bad input, Redis away...
            return False

    async def ScheduleJob(self, request: jobs_pb2.ScheduleJobRequest,
                          context: Context) -> jobs_pb2.ScheduleJobResponse:
        try:
            if await self._schedule_on_loop(request):
                return _SCHEDULED
        except ReplyTimeout as exc:  # answered as the HTTP API's fast path answers it
            await context.abort_with_status(
                status_for(errors.redis_unavailable(str(exc)), self.app_id))
        return await self._run(context, "ScheduleJob", lambda: self._schedule(request))

    ScheduleJobAlpha1 = ScheduleJob

    # --- GetJob ----------------------------------------------------------------------

    def _get(self, request: jobs_pb2.GetJobRequest) -> jobs_pb2.GetJobResponse:
        name = validate_name(request.name)
        view = self.store.get(self.app_id, name)
        if view is None:
            raise errors.job_not_found(name)
        job = job_message(view.job)
        if job.ByteSize() > MAX_LISTED_BYTES:
            # JSON data stored over HTTP, as a protobuf Value: a number is 11 bytes there,
            # 1 MiB of them over 5 MiB, past what a client takes by default (the SDK's call
            # failed on its side, "Received message larger than max", after the work).
            raise ApiError(
                413, "DAPR_SCHEDULER_GET_JOB",
                f"job {name!r} as a gRPC Job message is {job.ByteSize():,} bytes (its data as "
                f"a google.protobuf.Value), more than a gRPC client takes by default "
                f"({MAX_LISTED_BYTES:,}); GET it over HTTP (GET /v1.0/jobs/{{name}})")
        return jobs_pb2.GetJobResponse(job=job)

    async def GetJob(self, request: jobs_pb2.GetJobRequest,
                     context: Context) -> jobs_pb2.GetJobResponse:
        return await self._run(context, "GetJob", lambda: self._get(request))

    GetJobAlpha1 = GetJob

    # --- DeleteJob -------------------------------------------------------------------

    def _delete(self, request: jobs_pb2.DeleteJobRequest) -> jobs_pb2.DeleteJobResponse:
        # Like Dapr and the HTTP API: deleting a job that does not exist is not an error.
        self.store.delete(self.app_id, validate_name(request.name))
        return jobs_pb2.DeleteJobResponse()

    async def DeleteJob(self, request: jobs_pb2.DeleteJobRequest,
                        context: Context) -> jobs_pb2.DeleteJobResponse:
        return await self._run(context, "DeleteJob", lambda: self._delete(request))

    DeleteJobAlpha1 = DeleteJob

    # --- DeleteJobsByPrefix ----------------------------------------------------------

    def _delete_prefix(self, prefix: str) -> int:
        if len(prefix) > MAX_NAME_LENGTH:
            raise ApiError(400, errors.MALFORMED_REQUEST,
                           f"name_prefix is longer than a job name can be ({MAX_NAME_LENGTH})")
        return self.store.delete_prefix(self.app_id, prefix)

    async def DeleteJobsByPrefix(
        self, request: jobs_pb2.DeleteJobsByPrefixRequest, context: Context
    ) -> jobs_pb2.DeleteJobsByPrefixResponse:
        # No prefix, or an empty one: every job of the app, as in Dapr.
        await self._run(context, "DeleteJobsByPrefix",
                        lambda: self._delete_prefix(request.name_prefix))
        return jobs_pb2.DeleteJobsByPrefixResponse()

    async def DeleteJobsByPrefixAlpha1(
        self, request: jobs_pb2.DeleteJobsByPrefixRequestAlpha1, context: Context
    ) -> jobs_pb2.DeleteJobsByPrefixResponseAlpha1:
        await self._run(context, "DeleteJobsByPrefixAlpha1",
                        lambda: self._delete_prefix(request.name_prefix))
        return jobs_pb2.DeleteJobsByPrefixResponseAlpha1()

    # --- ListJobs --------------------------------------------------------------------

    def _list(self) -> list[jobs_pb2.Job]:
        listed: list[jobs_pb2.Job] = []
        size = 0
        token = ""
        while True:
            views, token = self.store.list_jobs(self.app_id, "", token, _PAGE)
            for view in views:
                job = job_message(view.job)
                size += job.ByteSize() + 6  # the field's tag and length
                listed.append(job)
                if len(listed) > MAX_LISTED or size > MAX_LISTED_BYTES:
                    what = (f"more than {MAX_LISTED} jobs" if len(listed) > MAX_LISTED
                            else f"jobs of more than {MAX_LISTED_BYTES} bytes")
                    raise ApiError(
                        413, "DAPR_SCHEDULER_LIST_JOBS",
                        f"app {self.app_id!r} has {what}, more than one ListJobs answer "
                        "holds; list them page by page over HTTP "
                        "(GET /v1.0/jobs?limit=1000&pageToken=...)",
                    )
            if not token:
                return listed

    async def ListJobs(self, request: jobs_pb2.ListJobsRequest,
                       context: Context) -> jobs_pb2.ListJobsResponse:
        return jobs_pb2.ListJobsResponse(
            jobs=await self._run(context, "ListJobs", self._list))

    async def ListJobsAlpha1(self, request: jobs_pb2.ListJobsRequestAlpha1,
                             context: Context) -> jobs_pb2.ListJobsResponseAlpha1:
        return jobs_pb2.ListJobsResponseAlpha1(
            jobs=await self._run(context, "ListJobsAlpha1", self._list))
