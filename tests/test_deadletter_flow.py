"""The dead-letter queue end to end, from the command line: a failing trigger is
dead-lettered, `jobrunner dlq` lists, replays (delivered again with a new attempt
series and the same idempotency id; failing again, it returns to the queue) and
purges it."""

from __future__ import annotations

import dataclasses

import redis
from click.testing import CliRunner, Result

from app.cli.main import main
from app.jobs.model import FailureKind, FailurePolicy
from app.settings import Settings
from app.store.history import History
from app.store.keys import Keys, job_id
from app.store.store import Store
from tests.support.jobs import APP, dead_letters, make_job
from tests.support.receiver import Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from tests.test_api_deadletters import put_dead_letter

ONE_ATTEMPT = FailurePolicy(FailureKind.CONSTANT, 0, 0)


def dlq(settings: Settings, *args: str) -> Result:
    result = CliRunner().invoke(
        main, ["dlq", *args, "--app-id", APP, "--redis-url", settings.redis_url],
        env={"JOBRUNNER_PREFIX": settings.prefix}, catch_exceptions=False)
    return result


def test_replay_delivers_again_then_a_second_failure_returns_to_the_queue(
        settings: Settings, receiver: Receiver, store: Store) -> None:
    receiver.status = 500
    with ThreadWorker(settings):
        store.schedule(make_job("flaky", data={"n": 1}, failure_policy=ONE_ATTEMPT))
        [letter] = wait_for(lambda: dead_letters(store), what="the dead letter")
        first = receiver.received("/job/flaky")
        assert [d.headers["jobrunner-attempt"] for d in first] == ["1"]

        listing = dlq(settings, "list")
        assert listing.exit_code == 0, listing.output
        assert letter.id in listing.output and "HTTP 500" in listing.output

        # Replayed while the app still fails: delivered once more, then back in the queue.
        assert dlq(settings, "replay", letter.id).output.strip() == "replayed 1"
        wait_for(lambda: len(receiver.received("/job/flaky")) == 2, what="the replay")
        [again] = wait_for(lambda: dead_letters(store), what="the letter back in the queue")
        assert again.id == letter.id
        # The same trigger again: due when it was, not when it was replayed.
        assert again.sched_ms == letter.sched_ms
        replayed = receiver.received("/job/flaky")[1]
        assert replayed.headers["jobrunner-scheduled-ms"] == str(letter.sched_ms)
        entries = History(store).read(APP, "flaky")
        assert entries is not None
        assert {e.due_ms for e in entries.entries} == {letter.sched_ms}

        # The app recovers: replayed by prefix, delivered, and the queue is empty.
        receiver.status = 200
        assert dlq(settings, "replay", "--prefix", "fl").output.strip() == "replayed 1"
        wait_for(lambda: len(receiver.received("/job/flaky")) == 3, what="the second replay")
        wait_for(lambda: store.counts()["jobs"] == 0, what="the replay acknowledged")
    deliveries = receiver.received("/job/flaky")
    # Every replay is a new attempt series of the same trigger: same idempotency id.
    assert [d.headers["jobrunner-attempt"] for d in deliveries] == ["1", "1", "1"]
    assert len({d.headers["jobrunner-trigger-id"] for d in deliveries}) == 1
    assert all(d.body == b'{"n":1}' for d in deliveries)
    assert dead_letters(store) == []


def test_purge_and_usage_errors(settings: Settings, receiver: Receiver, store: Store) -> None:
    receiver.status = 503
    with ThreadWorker(settings):
        for name in ("a1", "a2", "b1"):
            store.schedule(make_job(name, failure_policy=ONE_ATTEMPT))
        wait_for(lambda: len(dead_letters(store)) == 3, what="three dead letters")
    letter_b = next(d for d in dead_letters(store) if d.name == "b1")
    shown = dlq(settings, "show", letter_b.id)
    assert shown.exit_code == 0 and letter_b.id in shown.output

    nothing = dlq(settings, "purge")
    assert nothing.exit_code == 2 and "say which dead letters" in nothing.output
    # A mistyped id is an error (exit 1), naming it, whatever else was done.
    typo = dlq(settings, "purge", letter_b.id + "x")
    assert (typo.exit_code, typo.output.splitlines()) == (1, [
        "purged 0", f"Error: no dead letter {letter_b.id + 'x'!r} for app {APP!r}"])
    typo = dlq(settings, "replay", "nope")
    assert (typo.exit_code, typo.output.splitlines()) == (1, [
        "replayed 0", f"Error: no dead letter 'nope' for app {APP!r}"])
    # (in no set order: the three were delivered at once)
    assert sorted(d.name for d in dead_letters(store)) == ["a1", "a2", "b1"]
    assert dlq(settings, "purge", "--prefix", "a").output.strip() == "purged 2"
    assert [d.name for d in dead_letters(store)] == ["b1"]
    assert dlq(settings, "purge", "--all").output.strip() == "purged 1"
    assert dead_letters(store) == []
    missing = dlq(settings, "show", letter_b.id)
    assert missing.exit_code == 1 and "no dead letter" in missing.output


def test_unreachable_redis_is_a_clear_error(settings: Settings) -> None:
    result = CliRunner().invoke(
        main, ["dlq", "list", "--redis-url", "redis://127.0.0.1:1/0"], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach Redis at redis://127.0.0.1:1/0")
    assert "Traceback" not in result.output


def test_a_replay_leaves_the_letters_it_cannot_read_and_names_them(
        settings: Settings, redis_client: redis.Redis) -> None:
    good = put_dead_letter(redis_client, settings, APP, "good", dead_ms=1)
    bad = put_dead_letter(redis_client, settings, APP, "bad", dead_ms=2)
    dead = Keys(settings.prefix, settings.partitions).for_job(job_id(APP, "bad")).dead
    redis_client.hset(dead, bad.id, dataclasses.replace(bad, record="not json").encode())
    result = dlq(settings, "replay", "--all")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "replayed 1",
        "Error: 1 dead letter this version cannot read, left as it is (purge it):",
        f"  {bad.id}"]
    assert redis_client.hget(dead, bad.id) is not None
    assert redis_client.hget(Keys(settings.prefix, settings.partitions).for_job(
        job_id(APP, "good")).dead, good.id) is None


def test_dlq_arguments_of_bytes_that_are_not_utf8_are_a_usage_error(settings: Settings) -> None:
    """As the jobs commands' (they said "purged 0" and exit 0)."""
    bad = "a\udcff"  # the byte 0xff, as Python reads it from argv
    for args in (["list", "--prefix", bad], ["show", bad], ["replay", bad],
                 ["replay", "--prefix", bad], ["purge", bad], ["purge", "--prefix", bad]):
        result = dlq(settings, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "'a\\xff' is not UTF-8 text" in result.output, (args, result.output)
