"""The worker loop: claim due triggers, deliver them concurrently, settle the outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from typing import Any

from app.jobs.clock import now_ms, now_ns
from app.jobs.errors import JobrunnerError
from app.jobs.model import CatchUp, DeadLetter, FailureKind, Trigger
from app.jobs.schedule import catch_up_due, next_fire_ms
from app.settings import Settings
from app.store import history
from app.store.keys import is_fired_now
from app.store.redis_client import UNAVAILABLE
from workers import delivery
from workers.grpc_client import GrpcClient
from workers.http_client import HttpClient, Sent
from workers.metrics import LAST_FLUSH_WITHIN_S, WorkerMetrics
from workers.queue import RELEASE_WITHIN_S, Action, Claim, Queue, Settled, Settlement
from workers.slots import Slots
from workers.timekeeping import RedisClock

log = logging.getLogger("jobrunner.worker")

# Triggers due within this long are claimed before their due time, and each delivery
# waits for its own (never early): the claim's round trip and its jitter (p99 1-1.5 ms,
# at times 2-5 ms) stay out of the lateness.
CLAIM_AHEAD_MS = 5
# A wait for a due time: the loop's timer aims this much early, a blocking sleep takes
# the rest (the loop's timers tick in whole ms and fire up to 1 ms either side).
PRECISE_S = 0.001
# A sleep at least this long has room for refreshing the app registrations first.
REFRESH_AHEAD_S = 0.003
# A trigger that waited this long in the worker for its app's slot (a slow app's) is sent
# only if it still holds its lease: its job may have been deleted or overwritten meanwhile.
# A round trip each: not for the short waits of a burst (one a delivery tripled a
# worker's CPU per delivery).
RECHECK_AFTER_WAIT_S = 0.5
# What a delivery leaves of its lease, at least, for settling its outcome (Worker._pool_wait_s).
LEASE_MARGIN_S = 1.0
# With fewer slots free than a batch (Slots.refill), a claim still goes out this long after
# the last: slots held by hanging deliveries (and taken again by their app's next
# triggers as each times out) kept the free count under a batch, and the worker claimed
# nothing for the other apps, with a quarter of its slots free, for seconds.
CLAIM_ANYWAY_S = 0.02
# Parking the claimed triggers of apps with no live API process, at most (their leases
# run out otherwise, and the next claim takes them again).
STAGE_WITHIN_S = 1.0
# A stop's deadline past the grace period (JOBRUNNER_SHUTDOWN_GRACE): settling what was
# delivered, giving back the rest, the last counts. The supervisor kills a worker then.
STOP_MARGIN_S = 5.0
# The outcome of a delivery sent, but not answered within the stop's grace.
CUT_SHORT = "no answer before the worker stopped"


def _fields(t: Trigger, outcome: delivery.Outcome, **more: object) -> dict[str, object]:
    """The structured fields of a delivery's log line; status: the HTTP status, the gRPC
    app's answer (OK, or its code and message), or why no answer came."""
    status = outcome.status if outcome.status is not None else outcome.error or "OK"
    return {"app": t.job.app_id, "job": t.job.name, "attempt": t.attempt, "status": status,
            **more}


class Flag:
    """An asyncio.Event with one waiter and a timeout, woken in one step of the loop.

    Event.wait under asyncio.wait takes a task per wait and several loop steps from set()
    to the waiter running; in a burst each step is a round of up to a worker's worth of
    finished deliveries, and the claim loop woke too late to keep the next triggers
    coming (the pipeline stalled with slots free)."""

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, timeout: float) -> None:
        """Until set, or `timeout` seconds."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _unsettled_at_stop(n: int) -> None:
    if n:
        log.warning("stopping with %d outcomes redis did not take: their triggers go again "
                    "when their leases run out", n)


async def _until(due_ms: int) -> None:
    """Until the clock reads `due_ms`, to ~0.1 ms. The blocking sleep holds the worker's
    loop at most about 2 * PRECISE_S (answers and settlements wait; nothing goes early)."""
    while (rest := (due_ms * 1_000_000 - now_ns()) / 1e9) > 0:
        if rest > PRECISE_S:
            await asyncio.sleep(rest - PRECISE_S)
        else:
            time.sleep(rest)


class Worker:
    def __init__(self, settings: Settings, queue: Queue | None = None) -> None:
        self.settings = settings
        self.queue = queue or Queue(settings)
        self.clock = RedisClock(self.queue)  # the clock due times go by: Redis's
        self.metrics = WorkerMetrics(self.queue.redis, self.queue.keys,
                                     lambda: self.inflight.values(), settings.concurrency,
                                     prometheus=bool(settings.worker_metrics_port))
        # A task per delivery (_deliver), or the answer's future of one sent at once.
        self.inflight: dict[asyncio.Future[Any], Trigger] = {}
        # Those of them whose request went out: the app may have it, so a stop that cuts
        # one short counts its attempt (_shutdown), where one not sent yet is given back.
        # (when each started: its clock and perf_counter, for its outcome)
        self._written: dict[asyncio.Future[Any], tuple[int, float]] = {}
        self.slots = Slots(settings.concurrency, settings.app_concurrency, settings.claim_batch)
        self.settled: list[Settlement] = []
        self._slot_free = Flag()
        self._claimed_at = 0.0  # when the last claim went out (monotonic)
        self._wake = Flag()
        self._idle = Flag()  # set: the claim loop sleeps, with time to spare
        self._to_settle = Flag()
        self._http = HttpClient(settings.connections_per_app)
        self._grpc = GrpcClient()  # apps registered with protocol grpc; no channel until one
        self._backoff = 0.05
        self._unsettled: set[int] = set()  # partitions whose outcomes wait to be written
        self._settling: list[Settlement] = []  # the batch being written
        self._stopping = False
        self._stop_by: float | None = None  # the stop's deadline, loop time (run)
        # Claimed by a call that answered once the stop was asked: the stop's last moments
        # would cut their deliveries short, and they would go again (_shutdown).
        self._claimed_at_stop: list[Trigger] = []
        self._planned_wake_ms = 0  # when the sleeping claim loop means to look again
        # A call Redis Cluster answered late has ended (Queue.on_parked_done): its claimed
        # triggers, or the outcomes it carried, are taken now.
        self._parked_done = False
        self.queue.on_parked_done = self._on_parked_done

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and deliver until `stop` is set, then finish or release what is held."""
        await self.clock.first(stop)  # before the first claim: its "now" is Redis's
        listener = asyncio.create_task(self._listen_for_wakeups(stop))
        counting = asyncio.create_task(self.metrics.run(stop, self._quiet))  # to Redis, 1/s
        timekeeping = asyncio.create_task(self.clock.keep(stop))
        helpers = [asyncio.create_task(self._wake_all_on(stop)),
                   asyncio.create_task(self._settle_loop(stop)),
                   listener,
                   counting]
        try:
            while not stop.is_set():
                limit = await self._room_to_claim(stop)
                if not limit:
                    continue
                self._wake.clear()  # wake-ups from here on mean: look again after this claim
                claimed_at = self._claimed_at = time.monotonic()
                claim = await self._claim(limit, stop)
                if claim is None:
                    continue  # Redis unavailable: backed off, try again
                since = self._slow_claim(claimed_at)
                # (those of calls that went on in the background: as long as each took)
                parked = {token: self._slow_claim(at) for token, at in claim.parked.items()}
                for trigger in self._pass_over_missed(await self._stage_offline(claim.triggers)):
                    if stop.is_set():  # claimed as the stop came: given back, not started
                        self._claimed_at_stop.append(trigger)
                        continue
                    waited_since = parked.get(trigger.lease, since) if parked else since
                    if self.slots.admit(trigger, waited_since or time.monotonic()):  # else: waits
                        self._start(trigger, waited_since)
                self.slots.blocked(claim.blocked)  # a slot of theirs freed: claim again
                if not claim.more:  # nothing else due now that this worker has room for
                    await self._sleep_until(claim.earliest, stop)
        finally:
            stop.set()  # an error ended the loop: the helpers end too, or this would hang
            self._set_stop_deadline()  # (an error ended the loop: from now)
            listener.cancel()  # nothing left to wake; it would wait up to 1 s for a message
            timekeeping.cancel()  # and ended before the connections close: a read cut
            await asyncio.gather(timekeeping, return_exceptions=True)  # short is no error
            # (metrics.close writes the last counts, within a bound; a flush Redis does not
            # answer, retried by redis-py for a minute, would hold up the stop)
            counting.cancel()
            await self._shutdown(helpers)
            await self.metrics.close(self.stop_time_left(LAST_FLUSH_WITHIN_S))
            self._http.close()
            await self._grpc.close()

    @staticmethod
    def _slow_claim(claimed_at: float) -> float | None:
        """`claimed_at` for a claim that took long (Redis failing over: a call for each
        partition, some retried), whose first triggers were leased at its start: they go
        out as ones that waited since then, their lease checked first (one too short for a
        delivery is given back; sent, it ran out and the trigger went out twice). None
        for a claim of the usual milliseconds."""
        return claimed_at if time.monotonic() - claimed_at > RECHECK_AFTER_WAIT_S else None

    def _on_parked_done(self) -> None:
        self._parked_done = True
        self._to_settle.set()
        self._wake.set()

    async def _room_to_claim(self, stop: asyncio.Event) -> int:
        """How many triggers to claim now; 0 after waiting for deliveries to finish.
        Claims come in batches, not one per freed slot: each is a round trip (but with
        any slot free, one goes out CLAIM_ANYWAY_S after the last)."""
        free = self.slots.free
        if free >= self.slots.refill or not self.inflight:
            return min(free, self.settings.claim_batch)
        wait = self._claimed_at + CLAIM_ANYWAY_S - time.monotonic() if free else 1.0
        if wait <= 0:
            return free
        self._slot_free.clear()
        await self._slot_free.wait(timeout=wait)
        return 0

    async def _quiet(self, timeout: float) -> None:
        """Until the claim loop sleeps with time to spare, or `timeout` s (it may never)."""
        self._idle.clear()
        await self._idle.wait(timeout)

    async def _wake_all_on(self, stop: asyncio.Event) -> None:
        """`stop` ends every wait of the loops at once."""
        await stop.wait()
        self._set_stop_deadline()  # from the stop asked, not from the claim loop's end
        for flag in (self._slot_free, self._wake, self._to_settle, self._idle):
            flag.set()

    async def _claim(self, limit: int, stop: asyncio.Event) -> Claim | None:
        if len(self._unsettled) >= self.queue.keys.partitions:
            # Redis was away: settle first what was delivered meanwhile. A claim first
            # would take back the triggers whose leases ran out, and deliver them again.
            await self._wake.wait(timeout=0.5)  # set when the settlements are in
            return None
        # Not from a partition whose outcomes wait (the others go on: on Redis Cluster, the
        # one master failing over), nor, while any wait, from one with outcomes not written
        # yet: writing them waits behind the failing ones, and leases may run out.
        skip = self._unsettled
        if skip:
            skip = skip | {s.trigger.partition for s in (*self.settled, *self._settling)}
        try:
            claim = await self.queue.claim_within(limit, self.slots.budgets(), CLAIM_AHEAD_MS,
                                                  skip=skip)
        except UNAVAILABLE as exc:
            log.warning("redis unavailable, retrying in %.2fs: %s", self._backoff, exc)
            await self._wait_any(stop, timeout=self._backoff)
            self._backoff = min(self._backoff * 2, 2.0)
            return None
        if claim.answered:
            self._backoff = 0.05
        # Keep the triggers just claimed if Redis does not answer (dropping them strands
        # them until their lease runs out); deliver with the cached registrations, if any
        # (load_apps logged why).
        with contextlib.suppress(*UNAVAILABLE):
            await self.queue.load_apps({t.job.app_id for t in claim.triggers})
        return claim

    async def _stage_offline(self, triggers: list[Trigger]) -> list[Trigger]:
        """Triggers of apps with no live API process wait, staged, instead of burning their
        retries (as Dapr does); the rest are returned for delivery."""
        offline = [t for t in triggers if not self.queue.is_live(t.job.app_id)]
        if not offline:
            return triggers
        try:
            # Within a bound: the claim loop waits for it (a master that stopped answering
            # held it for as long as redis-py tried again, every other partition too).
            async with asyncio.timeout(STAGE_WITHIN_S):
                # Look again before parking anything: the app may have just come back. (If
                # it comes back right after this, its API's next heartbeat unstages it.)
                await self.queue.load_apps({t.job.app_id for t in offline}, max_age_s=0.0)
                offline = [t for t in offline if not self.queue.is_live(t.job.app_id)]
                staged = await self.queue.stage(offline)
            log.info("staged %d triggers of apps with no live API process", staged)
        except UNAVAILABLE as exc:  # their leases will run out
            log.warning("redis unavailable while staging: %s", exc)
        except TimeoutError:
            log.warning("redis unavailable while staging: no answer within %gs",
                        STAGE_WITHIN_S)
        return [t for t in triggers if self.queue.is_live(t.job.app_id)]

    def _pass_over_missed(self, triggers: list[Trigger]) -> list[Trigger]:
        """The triggers to deliver. A first attempt taken late is first put through its
        job's catch-up policy (app/jobs/schedule.py catch_up_due): one the policy passes
        over is settled without delivery (Action.SKIP), its job going on with the trigger
        the policy gives. Costs one comparison for jobs of the default policy."""
        now, keep = now_ms(), []
        for t in triggers:
            job = t.job
            if job.catch_up is CatchUp.COALESCE or t.attempt != 1 or t.sched_ms >= now:
                keep.append(t)
                continue
            try:
                due = catch_up_due(job.schedule, job.due_time is not None, t.sched_ms,
                                   t.count, job.repeats, job.expires_ms, now, job.catch_up,
                                   self.settings.max_catch_up,
                                   int(self.settings.catch_up_grace_s * 1000))
            except Exception as exc:  # a stored schedule past handling (another version's)
                self._cannot_process(t, exc, now, time.perf_counter())
                self._to_settle.set()
                continue
            if due == t.sched_ms:
                keep.append(t)
                continue
            log.info("missed: passed over", extra={
                "app": job.app_id, "job": job.name, "catch_up": job.catch_up.value,
                "lateness_ms": now - t.sched_ms, "trigger": t.trigger_id,
                "next_ms": due})
            self.settled.append(Settlement(t, Action.SKIP, due))
            self._to_settle.set()
        return keep

    def _start(self, trigger: Trigger, waited_since: float | None = None) -> None:
        if not self._send_now(trigger, waited_since):
            self.inflight[asyncio.create_task(self._deliver(trigger, waited_since))] = trigger

    def _send_now(self, trigger: Trigger, waited_since: float | None) -> bool:
        """A burst's usual delivery, with no task of its own: due already, over HTTP, sent
        now on an idle connection, its answer handled in `_answered`. False: nothing was
        sent; _deliver's path takes it (a wait for its time, a long wait for its slot, a
        "trigger now", gRPC, a connection to make, a fault)."""
        started = now_ms()
        if max(trigger.sched_ms, trigger.due_ms) > started or is_fired_now(trigger.job_id):
            return False
        app = self.queue.app(trigger.job.app_id)
        if app is None or app.protocol == "grpc":
            return False
        timeout_s = self._timeout_s(trigger)
        waited = 0.0 if waited_since is None else time.monotonic() - waited_since
        if waited_since is not None and (  # _deliver's checks of one that waited its turn
                waited > RECHECK_AFTER_WAIT_S or self._pool_wait_s(timeout_s, waited) <= 0):
            return False
        clock = time.perf_counter()
        try:
            origin, path, body, headers = delivery.build_request(
                trigger, app, self.settings, started)
            sent = self._http.post_now(
                origin, path, body, headers, timeout_s, self._pool_wait_s(timeout_s, waited),
                functools.partial(self._answered, trigger, started, clock, timeout_s))
        except Exception:
            return False  # _deliver meets it again, and dead-letters the trigger saying why
        if sent is None:
            return False
        self.inflight[sent] = trigger
        self._written[sent] = started, clock
        return True

    def _answered(self, trigger: Trigger, started: int, clock: float, timeout_s: float,
                  sent: Sent) -> None:
        """_send_now's outcome, the loop's turn after the answer (or the cancel of a stop):
        what a task's _deliver does after its send."""
        del self.inflight[sent]
        self._written.pop(sent, None)
        if sent.cancelled():  # stopping: _shutdown settled it
            self._done(trigger)
            return
        try:
            if (exc := sent.exception()) is None:
                status, retry_after = sent.result()
                outcome = delivery.answered(status, retry_after, self.settings.max_retry_after_s)
            else:
                outcome = delivery.failed(exc, timeout_s)
            self._conclude(trigger, outcome, started, clock)
        except Exception as error:
            self._cannot_process(trigger, error, started, clock)
        finally:
            self._done(trigger)

    async def _deliver(self, trigger: Trigger, waited_since: float | None = None) -> None:
        this: asyncio.Future[Any] = asyncio.current_task()  # type: ignore[assignment]
        not_before = max(trigger.sched_ms, trigger.due_ms)  # a retry's time, or sched
        if not_before > now_ms():  # claimed ahead (CLAIM_AHEAD_MS)
            await _until(not_before)
        started, clock = now_ms(), time.perf_counter()
        try:
            timeout_s = self._timeout_s(trigger)
            if await self._too_late(trigger, timeout_s, waited_since):
                return
            waited = (waited_since is not None
                      and time.monotonic() - waited_since > RECHECK_AFTER_WAIT_S)
            if waited or is_fired_now(trigger.job_id):
                if not await self._still_to_send(trigger, waited):
                    return
                if await self._too_late(trigger, timeout_s, waited_since):  # (its round trip)
                    return
            waited_s = 0.0 if waited_since is None else time.monotonic() - waited_since
            app = self.queue.app(trigger.job.app_id)
            if app is None:
                outcome = delivery.Outcome(False, None, "no address registered for this app id")
            elif app.protocol == "grpc":
                origin, request, metadata = delivery.build_grpc_call(
                    trigger, app, self.settings, started)
                self._written[this] = started, clock  # the call goes out as it starts
                outcome = await delivery.send_grpc(self._grpc, origin, request, metadata,
                                                   timeout_s)
            else:
                origin, path, body, headers = delivery.build_request(
                    trigger, app, self.settings, started)
                outcome = await delivery.send(self._http, origin, path, body, headers,
                                              timeout_s, self._pool_wait_s(timeout_s, waited_s),
                                              self.settings.max_retry_after_s,
                                              functools.partial(self._written.__setitem__,
                                                                this, (started, clock)))
            self._conclude(trigger, outcome, started, clock)
        except UNAVAILABLE as exc:
            # Unsettled, the trigger comes back when its lease runs out.
            log.warning("redis unavailable during delivery of %s: %s", trigger.trigger_id, exc)
        except Exception as exc:
            self._cannot_process(trigger, exc, started, clock)
        finally:
            self.inflight.pop(this, None)
            self._written.pop(this, None)
            self._done(trigger)

    def _conclude(self, trigger: Trigger, outcome: delivery.Outcome, started: int,
                  clock: float) -> None:
        """What came of an attempt: counted, logged, and its settlement queued."""
        duration_us = int((time.perf_counter() - clock) * 1_000_000)
        self.metrics.observe(trigger, outcome, started)
        if log.isEnabledFor(logging.INFO):  # the hot path: build nothing when off
            log.info("delivered" if outcome.done else "delivery failed",
                     extra=_fields(trigger, outcome, lateness_ms=started - trigger.sched_ms))
        self.settled.append(self._recorded(self._settlement(trigger, outcome), outcome.done,
                                           outcome.status, outcome.error, started,
                                           duration_us))

    def _cannot_process(self, trigger: Trigger, exc: Exception, started: int,
                        clock: float) -> None:
        """A trigger the worker cannot handle: retrying cannot help, and leaving it to the
        lease would redeliver it forever. It is dead-lettered, saying why; a recurring job
        goes on (the fault may be this trigger's alone)."""
        # One of ours (JobrunnerError) says what is wrong: its traceback would say no more.
        log.error("cannot process a trigger: %s", exc,
                  exc_info=None if isinstance(exc, JobrunnerError) else exc,
                  extra={"app": trigger.job.app_id, "job": trigger.job.name,
                         "attempt": trigger.attempt, "trigger": trigger.trigger_id})
        error = f"worker error: {type(exc).__name__}: {exc}"
        dead = self._dead(trigger, error, next_ms=self._next_or_none(trigger))
        dead.log_fields = {"app": trigger.job.app_id, "job": trigger.job.name,
                           "attempt": trigger.attempt, "status": error,
                           "trigger": trigger.trigger_id}
        self.settled.append(self._recorded(
            dead, False, None, error, started,
            int((time.perf_counter() - clock) * 1_000_000)))

    def _done(self, trigger: Trigger) -> None:
        """An attempt is over (settled or not): its slot goes to the app's next trigger."""
        self._to_settle.set()
        self._slot_free.set()
        # Stopping: what waits is given back (_shutdown), not started.
        waiting, claim = self.slots.give_back(trigger.job.app_id, start_next=not self._stopping)
        if waiting is not None:
            self._start(*waiting)
        if claim:
            self._wake.set()  # its app has room again for what was left due

    async def _still_to_send(self, trigger: Trigger, waited: bool) -> bool:
        """Whether the trigger is still to go out. One that waited here for its app's slot
        may have lost its lease meanwhile (its job deleted or overwritten, or the lease run
        out and the trigger taken by another worker): neither ours to send nor to settle.
        One whose job was paused meanwhile is given back: it waits for the resume. A
        "trigger now" whose job was deleted is dropped: settled, not delivered."""
        held, job_exists, paused = await self.queue.still_current(trigger, lease=waited)
        fields = {"app": trigger.job.app_id, "job": trigger.job.name,
                  "trigger": trigger.trigger_id}
        if not held:
            log.info("not sent: its lease is gone (the job changed, or the lease ran out)",
                     extra=fields)
            return False
        if paused:  # (pause.lua took it for one in flight: it was not sent yet)
            log.info("not sent: its job was paused while it waited", extra=fields)
            await self._give_back(trigger)  # into `paused`, due again at its resume
            return False
        if not job_exists:
            log.info("not sent: its job was deleted", extra=fields)
            self.settled.append(Settlement(trigger, Action.SKIP, None))
            return False
        return True

    async def _give_back(self, trigger: Trigger) -> None:
        """The trigger back to the due index now; else its lease runs out and it comes back
        then. Whatever the failure, it is Redis's or its client's, not the trigger's: never
        a dead letter (the catch-all in _deliver makes one)."""
        try:
            await self.queue.release([trigger])
        except Exception as exc:
            log.warning("cannot give back %s now, its lease will run out: %s: %s",
                        trigger.trigger_id, type(exc).__name__, exc)

    async def _too_late(self, trigger: Trigger, timeout_s: float,
                        waited_since: float | None) -> bool:
        """Whether a trigger that waited its turn here since `waited_since` is too late to
        send (its lease could run out mid-delivery): then it is given back."""
        if (waited_since is None
                or self._pool_wait_s(timeout_s, time.monotonic() - waited_since) > 0):
            return False
        await self._give_back(trigger)
        return True

    def _pool_wait_s(self, timeout_s: float, waited_s: float) -> float:
        """How long a delivery may wait for a free connection: what its lease leaves once
        the time it waited here for its app's slot, the app's time and a margin are taken
        (sent later, the lease could run out mid-delivery and the trigger go twice). Zero
        or less: too late to wait; one that waited for its slot is given back."""
        return self.settings.lease_s - waited_s - timeout_s - LEASE_MARGIN_S

    def _timeout_s(self, trigger: Trigger) -> float:
        """The job's deliveryTimeout, else the worker's; never past this worker's bound
        (below its lease, whatever the API that took the job allowed)."""
        own = trigger.job.delivery_timeout_ms
        if own is None:
            return self.settings.delivery_timeout_s
        return min(own / 1000, self.settings.max_job_delivery_timeout_s)

    def _next_ms(self, trigger: Trigger, now: int) -> int | None:
        """When the job's next trigger is due once this one is over; None: the job is."""
        job = trigger.job
        return next_fire_ms(job.schedule, trigger.sched_ms, trigger.count + 1, job.repeats,
                            job.expires_ms, now, job.catch_up, self.settings.max_catch_up)

    def _next_or_none(self, trigger: Trigger) -> int | None:
        try:
            return self._next_ms(trigger, now_ms())
        except Exception:  # a record past handling: the job ends with its dead letter
            return None

    def _settlement(self, trigger: Trigger, outcome: delivery.Outcome) -> Settlement:
        job, now = trigger.job, now_ms()
        if not outcome.done:
            delay = job.failure_policy.retry_delay_ms(trigger.attempt, random.random())
            if delay is not None and outcome.retry_after_ms is not None:
                delay = max(delay, outcome.retry_after_ms)  # the app said when: not before
            if delay is not None:
                log.warning("retry scheduled",
                            extra=_fields(trigger, outcome, retry_in_ms=delay))
                # now_ms() rounds down: + 1, so the retry waits at least its delay after
                # the answer (a trigger claimed ahead goes out at its exact time)
                return Settlement(trigger, Action.RETRY, now + 1 + delay)
        next_ms = self._next_ms(trigger, now)
        if outcome.done:
            return Settlement(trigger, Action.NEXT, next_ms)
        if job.failure_policy.kind is FailureKind.DROP:
            log.warning("dropped: failure policy drop", extra=_fields(trigger, outcome))
            return Settlement(trigger, Action.NEXT, next_ms)
        dead = self._dead(trigger, outcome.error, next_ms)
        dead.log_fields = _fields(trigger, outcome, trigger=trigger.trigger_id)
        return dead

    def _recorded(self, s: Settlement, done: bool, status: int | None, error: str,
                  started: int, duration_us: int) -> Settlement:
        """`s`, given its outcome for the job's history (app/store/history.py), unless the
        history is off."""
        if not self.settings.history_size:
            return s
        result = (history.RETRYING if s.action == Action.RETRY
                  else history.DEAD_LETTERED if s.action == Action.DEAD
                  else history.DELIVERED if done else history.DROPPED)
        t = s.trigger
        # The job's rev stands for its own trigger id; a replay keeps the dead trigger's.
        trigger = t.job.rev if t.job.replay_of is None else t.job.replay_of
        s.entry = history.encode_entry(trigger, t.scheduled_ms, started, t.attempt, result,
                                       status, duration_us, error,
                                       self.settings.history_entry_bytes)
        return s

    @staticmethod
    def _dead(trigger: Trigger, error: str, next_ms: int | None) -> Settlement:
        job = trigger.job
        letter = DeadLetter(
            id=trigger.trigger_id, app_id=job.app_id, name=job.name,
            sched_ms=trigger.scheduled_ms,
            attempts=trigger.attempt, error=error, dead_ms=now_ms(), record=job.encode().decode(),
        )
        return Settlement(trigger, Action.DEAD, next_ms, letter.id, letter.encode())

    async def _settle_loop(self, stop: asyncio.Event) -> None:
        """Settle finished deliveries in batches; after `stop`, until all are settled.
        Outcomes Redis did not take (a partition's master away) are tried again after a
        back-off, the others' written meanwhile as they come."""
        give_up_at: float | None = None
        loop = asyncio.get_running_loop()
        backoff = 0.05
        left: list[Settlement] = []  # not taken: tried again at retry_at
        retry_at = 0.0
        while not (stop.is_set() and not self.inflight and not self.settled and not left):
            if stop.is_set() and give_up_at is None:
                self._set_stop_deadline()
                give_up_at = self._stop_by
            retry = bool(left) and (loop.time() >= retry_at or self._parked_done)
            if not self.settled and not retry:
                self._to_settle.clear()
                try:
                    await self._to_settle.wait(min(0.5, retry_at - loop.time()) if left
                                               else 0.5)
                except asyncio.CancelledError:  # the stop's deadline, while waiting to retry
                    _unsettled_at_stop(len(left) + len(self.settled))
                    raise
                continue
            batch, self.settled = self.settled, []
            if retry:
                batch, left = batch + left, []
                self._parked_done = False
            self._settling = batch
            try:
                settled = await self.queue.settle(batch)
            except asyncio.CancelledError:
                _unsettled_at_stop(len(batch) + len(left))
                raise
            except Exception as exc:
                # Not only UNAVAILABLE: a loop that died on a client's unexpected error
                # would leave this worker delivering without settling, every trigger
                # coming back at each lease's end.
                settled = Settled([], batch, exc)
            finally:
                self._settling = []
            self.metrics.settled(settled.applied)  # not what a deleted job's lost lease undid
            self._log_dead_letters(batch, settled)
            self._wake_if_due_before_plan(batch)
            first_failure = not left and not retry
            left += settled.left
            before, self._unsettled = self._unsettled, {s.trigger.partition for s in left}
            if before - self._unsettled or (before and settled.applied):
                self._wake.set()  # the claim loop skipped these partitions
            if not left:
                backoff = 0.05
                self._parked_done = False  # (a claim's: nothing of it to settle)
                continue
            # A settlement is retried, never dropped (each applies once: by its lease); past
            # the shutdown deadline the leases run out instead and the triggers are
            # delivered again.
            if settled.left and isinstance(settled.error, UNAVAILABLE):
                log.warning("redis unavailable while settling %d triggers: %s",
                            len(settled.left), settled.error)
            elif settled.left and settled.error is not None:
                log.error("cannot settle %d triggers; retrying", len(settled.left),
                          exc_info=settled.error)
            if give_up_at is not None and loop.time() > give_up_at:
                _unsettled_at_stop(len(left))
                return
            if settled.left and (retry or first_failure):
                retry_at = loop.time() + backoff
                backoff = min(backoff * 2, 2.0)

    @staticmethod
    def _log_dead_letters(batch: list[Settlement], settled: Settled) -> None:
        """A line for each dead letter Redis stored, and for each it did not (the trigger's
        lease was gone: its job deleted or changed in flight, or its lease ran out)."""
        dead = [s for s in batch if s.log_fields is not None]  # (few: the hot path)
        if not dead:
            return
        applied = {id(s) for s in settled.applied}
        left = {id(s) for s in settled.left}
        for s in dead:
            if id(s) in left:
                continue
            if id(s) in applied:
                log.warning("dead-lettered", extra=s.log_fields)
            else:
                log.info("not dead-lettered: its lease is gone (the job changed, or the "
                         "lease ran out)", extra=s.log_fields)

    def _wake_if_due_before_plan(self, batch: list[Settlement]) -> None:
        """A retry or a next occurrence may be due before the claim loop meant to look."""
        soonest = min((s.at_ms for s in batch if s.at_ms is not None), default=None)
        if soonest is not None and (not self._planned_wake_ms or soonest < self._planned_wake_ms):
            self._wake.set()

    async def _listen_for_wakeups(self, stop: asyncio.Event) -> None:
        """A newly scheduled job may be due before we planned to look again."""
        while not stop.is_set():
            pubsub = self.queue.pubsub()
            try:
                await pubsub.subscribe(self.queue.keys.wake_channel)
                # A job scheduled before the subscription took hold published to nobody:
                # look once more now that no wake-up can be missed.
                self._wake.set()
                while not stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self._wake.set()
            except UNAVAILABLE:
                await self._wait_any(stop, timeout=0.5)
            except Exception:  # never die silently: polling alone would be late
                log.exception("wake-up listener failed; subscribing again")
                await self._wait_any(stop, timeout=0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _sleep_until(self, earliest_ms: int | None, stop: asyncio.Event) -> None:
        """Until CLAIM_AHEAD_MS before `earliest_ms` (at most idle_poll_s), or a wake-up."""
        now = now_ns() / 1e9  # not now_ms(): flooring would oversleep by up to 1 ms
        timeout = self.settings.idle_poll_s
        if earliest_ms is not None:
            timeout = min(timeout, max((earliest_ms - CLAIM_AHEAD_MS) / 1000 - now, 0.0))
        if timeout <= 0:
            await asyncio.sleep(0)  # a turn of the loop all the same: its I/O, a stop
            return
        self._planned_wake_ms = int((now + timeout) * 1000)
        if timeout > REFRESH_AHEAD_S and self.queue.apps_stale_within(timeout + 0.05):
            # Refresh the registrations now, while idle, not in the claim at the due time.
            with contextlib.suppress(*UNAVAILABLE):
                await self.queue.load_apps(None, max_age_s=0.0)
        if timeout > REFRESH_AHEAD_S:
            self._idle.set()  # the metrics flush, due, goes now (_quiet)
        await self._wake.wait(timeout=timeout)
        self._planned_wake_ms = 0

    @staticmethod
    async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _set_stop_deadline(self) -> None:
        """One deadline for the whole stop, as the supervisor's (which kills then): each
        step takes what is left of it (stop_time_left)."""
        if self._stop_by is None:
            self._stop_by = (asyncio.get_running_loop().time() + self.settings.shutdown_grace_s
                             + STOP_MARGIN_S)

    def stop_time_left(self, most: float) -> float:
        """Of `most` seconds, what the stop's deadline leaves to a step of the stop (a tenth
        of a second at least); `most` before the stop."""
        if self._stop_by is None:
            return most
        return max(0.1, min(most, self._stop_by - asyncio.get_running_loop().time()))

    async def _shutdown(self, helpers: list[asyncio.Task[None]]) -> None:
        """Let deliveries in flight finish within the grace period; past it, count those
        sent as failed attempts (their failure policy decides: a retry, a dead letter),
        and give back the rest."""
        self._stopping = True
        if self.inflight:
            await asyncio.wait(list(self.inflight),
                               timeout=self.stop_time_left(self.settings.shutdown_grace_s))
        unfinished = list(self.inflight.items())
        # One already done (an answer in the grace's last turn, its callback still to run) is
        # settled by that callback: not given back too.
        cancelled = [(f, t) for f, t in unfinished if f.cancel()]
        # The app may have these, and may be acting on them: given back uncounted, they
        # went again as the same attempt, past a policy's retries (maxRetries 0: twice).
        # Settled before the cancels end them: the settle loop ends once nothing is in
        # flight and nothing is left to settle.
        unsent = [t for f, t in cancelled if f not in self._written]
        for f, t in cancelled:
            if (sent := self._written.get(f)) is not None:
                self._conclude(t, delivery.Outcome(False, None, CUT_SHORT), *sent)
        if unfinished:
            await asyncio.gather(*(f for f, _ in unfinished), return_exceptions=True)
        give_back = unsent + self.slots.drain() + self._claimed_at_stop
        if give_back:
            # Else their leases run out: a master that does not answer held a stop up for
            # as long as redis-py tried again (a minute).
            with contextlib.suppress(*UNAVAILABLE, TimeoutError):
                released = await asyncio.wait_for(self.queue.release(give_back),
                                                  self.stop_time_left(RELEASE_WITHIN_S))
                log.info("released %d unfinished triggers", released)
        # The settlements still going on (Redis slow to answer them) end by the deadline:
        # past it, their triggers' leases run out and they are delivered again.
        _, late = await asyncio.wait(helpers, timeout=self.stop_time_left(STOP_MARGIN_S))
        for task in late:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
