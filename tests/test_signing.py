"""Signed deliveries (README, "Verifying deliveries"): Standard Webhooks' headers, verified
with the standard's own Python package, `standardwebhooks`, and with the README's `verify`
run as it is written there.

What the signature must bind, besides the body: the timestamp, the trigger id, the attempt
and the job (hence the path). A captured delivery replayed to another job, or with another
trigger id or attempt, must fail; so must a wrong key and a stale timestamp; during a
rotation either key must verify. Real worker, real HTTP receiver or gRPC app on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import re
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import grpc
import pytest
from click.testing import CliRunner
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from standardwebhooks import webhooks
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.api.factory import create_app
from app.cli.main import main
from app.jobs.clock import now_ms
from app.jobs.model import FailureKind, FailurePolicy
from app.settings import Settings, SettingsError
from app.store.store import Store
from tests.support.jobs import APP, dead_letters, make_job, register
from tests.support.receiver import Delivery, Receiver
from tests.support.seed import SEED_BODY
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from tests.test_grpc_delivery import Recorder

pytestmark = pytest.mark.usefixtures("reap_workers")

README = Path(__file__).resolve().parents[1] / "README.md"
RETRY_AT_ONCE = FailurePolicy(FailureKind.CONSTANT, interval_ms=0, max_retries=3)
V1 = re.compile(r"^v1,[A-Za-z0-9+/]{43}=$")  # base64 of a 32-byte HMAC-SHA256

Verify = Callable[..., tuple[str, int]]


def _readme_code() -> dict[str, Any]:
    """The first Python block of the README's "Verifying deliveries", run as written."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Verifying deliveries"):]
    start = section.index("```python\n") + len("```python\n")
    namespace: dict[str, Any] = {}
    exec(compile(section[start:section.index("```", start)], "README.md", "exec"), namespace)
    return namespace


README_CODE = _readme_code()
readme_verify: Verify = README_CODE["verify"]
readme_grpc_payload: Callable[[Any], bytes] = README_CODE["grpc_payload"]


def _key() -> bytes:
    return os.urandom(32)


def _whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def _path(name: str) -> str:
    return "/job/" + quote(name, safe="")


def _name_of(path: str) -> str:
    return unquote(path.removeprefix("/job/"))


def _delivered(receiver: Receiver, name: str, n: int = 1) -> list[Delivery]:
    return wait_for(lambda: (d := receiver.received(_path(name))) and len(d) >= n and d,
                    what=f"{n} deliveries of {name!r}")


def _register(settings: Settings, receiver: Receiver) -> Store:
    return register(settings, receiver.url)


def _deliver(settings: Settings, receiver: Receiver, keys: tuple[bytes, ...],
             names: dict[str, Any]) -> dict[str, Delivery]:
    """One delivery of each job (name: data, None for none) under `keys`."""
    settings = settings.with_(signing_keys=keys)
    store = _register(settings, receiver)
    with ThreadWorker(settings):
        for name, data in names.items():
            store.schedule(make_job(name, data=data))
        return {name: _delivered(receiver, name)[0] for name in names}


def _with(d: Delivery, **headers: str) -> dict[str, str]:
    return {**d.headers, **headers}


# --- a real delivery verifies ------------------------------------------------------------


def test_http_deliveries_verify_with_the_standardwebhooks_package(
        settings: Settings, receiver: Receiver) -> None:
    """Bodies of every kind (none, JSON, the seed's Any) and names that need encoding; the
    id binds trigger id and attempt; the timestamp is this attempt's, in seconds."""
    key = _key()
    names = {"cr1": None, "R2-D2": {"droid": "R2-D2"}, "v1.2 ü@host:9": "someData"}
    before_s = now_ms() // 1000
    got = _deliver(settings, receiver, (key,), names)
    for name, d in got.items():
        assert Webhook(key).verify(d.body, d.headers, json_parse=False) is None
        assert Webhook(_whsec(key)).verify(d.body, d.headers, json_parse=False) is None
        assert V1.match(d.headers["webhook-signature"]), d.headers["webhook-signature"]
        trigger_id = unquote(d.headers["jobrunner-trigger-id"])
        assert trigger_id.startswith(f"{APP}/{name}@")
        assert unquote(d.headers["webhook-id"]) == f"{trigger_id}#1"
        assert "." not in d.headers["webhook-id"]  # the standard wants none in the id
        assert before_s <= int(d.headers["webhook-timestamp"]) <= d.received_at
        assert readme_verify(Webhook(key), APP, _name_of(d.path), d.headers, d.body) \
            == (trigger_id, 1)
    assert got["cr1"].body == b""
    assert "jobrunner-signature" not in got["cr1"].headers  # the old scheme is gone


def test_no_signing_keys_no_signature_headers(settings: Settings, receiver: Receiver) -> None:
    [d] = _deliver(settings, receiver, (), {"plain": 1}).values()
    assert not {h for h in d.headers if h.startswith("webhook-")}


# --- what a captured delivery cannot be turned into ---------------------------------------


def test_a_delivery_replayed_to_another_job_fails_the_documented_check(
        settings: Settings, receiver: Receiver) -> None:
    """The issue's case: an empty-body delivery for /job/cr1 replayed to
    /job/transfer-all-funds. The signature alone still verifies (the standard does not sign
    the path); the README's check of the id's job refuses it, at a receiver that answers
    401 to what fails `verify`."""
    key = _key()
    wh = Webhook(key)

    def respond(d: Delivery) -> int:
        try:
            readme_verify(wh, APP, _name_of(d.path), d.headers, d.body)
        except WebhookVerificationError:
            return 401
        return 200

    receiver.responder = respond
    settings = settings.with_(signing_keys=(key,))
    store = _register(settings, receiver)
    with ThreadWorker(settings):
        store.schedule(make_job("cr1"))
        [captured] = _delivered(receiver, "cr1")
        wait_for(lambda: store.get(APP, "cr1") is None, what="cr1 acknowledged (200)")
    assert captured.body == b""
    assert dead_letters(store) == []

    def replay(path: str) -> int:
        conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
        try:
            headers = {k: v for k, v in captured.headers.items()
                       if k not in ("host", "content-length")}
            conn.request("POST", path, body=captured.body, headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()

    wh.verify(captured.body, captured.headers, json_parse=False)  # the signature holds...
    assert replay("/job/transfer-all-funds") == 401  # ...the job check does not
    with pytest.raises(WebhookVerificationError, match="another app or job"):
        readme_verify(wh, APP, "transfer-all-funds", captured.headers, captured.body)
    with pytest.raises(WebhookVerificationError, match="another app or job"):
        readme_verify(wh, "other-app", "cr1", captured.headers, captured.body)
    # An exact replay to the same job passes: the trigger id, its idempotency key, is the
    # same as the first delivery's, so the app does the work once.
    assert replay("/job/cr1") == 200


def test_a_changed_trigger_id_fails_verification(settings: Settings, receiver: Receiver) -> None:
    key = _key()
    [d] = _deliver(settings, receiver, (key,), {"cr1": None}).values()
    msg_id = d.headers["webhook-id"]
    trigger, _, attempt = msg_id.rpartition("#")
    head, _, due = trigger.rpartition(":")
    for forged in (f"{head}:{int(due) + 60_000}#{attempt}",  # another occurrence
                   msg_id.replace("/cr1@", "/transfer-all-funds@"),  # another job
                   msg_id.replace(f"{APP}/", "other-app/")):  # another app
        assert forged != msg_id
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            Webhook(key).verify(d.body, _with(d, **{"webhook-id": forged}), json_parse=False)


def test_a_changed_attempt_fails_verification(settings: Settings, receiver: Receiver) -> None:
    """A real retry: attempts 1 and 2 carry their own ids, each verifies as sent, and
    neither signature verifies with the other's attempt."""
    key = _key()
    receiver.responder = lambda d: 500 if d.headers["jobrunner-attempt"] == "1" else 200
    settings = settings.with_(signing_keys=(key,))
    store = _register(settings, receiver)
    with ThreadWorker(settings):
        store.schedule(make_job("retried", data=1, failure_policy=RETRY_AT_ONCE))
        first, second = _delivered(receiver, "retried", 2)[:2]
    assert first.headers["webhook-id"].endswith("#1")
    assert second.headers["webhook-id"] == first.headers["webhook-id"][:-1] + "2"
    for d in (first, second):
        Webhook(key).verify(d.body, d.headers, json_parse=False)
        assert readme_verify(Webhook(key), APP, "retried", d.headers, d.body)[1] \
            == int(d.headers["jobrunner-attempt"])
    for d, other in ((first, second), (second, first)):
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            Webhook(key).verify(d.body, _with(d, **{"webhook-id": other.headers["webhook-id"]}),
                                json_parse=False)


def test_a_changed_body_or_timestamp_fails_verification(settings: Settings,
                                                         receiver: Receiver) -> None:
    key = _key()
    [d] = _deliver(settings, receiver, (key,), {"pay": {"amount": 1}}).values()
    assert d.body == b'{"amount":1}'
    with pytest.raises(WebhookVerificationError):
        Webhook(key).verify(b'{"amount":1000}', d.headers, json_parse=False)
    earlier = str(int(d.headers["webhook-timestamp"]) - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(key).verify(d.body, _with(d, **{"webhook-timestamp": earlier}), json_parse=False)


# --- keys ---------------------------------------------------------------------------------


def test_rotation_two_keys_either_verifies(settings: Settings, receiver: Receiver) -> None:
    new, old = _key(), _key()
    [d] = _deliver(settings, receiver, (new, old), {"rotating": "x"}).values()
    signatures = d.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(V1.match(s) for s in signatures)
    for key in (new, old):
        Webhook(key).verify(d.body, d.headers, json_parse=False)
        assert readme_verify(Webhook(_whsec(key)), APP, "rotating", d.headers, d.body)[1] == 1
    # Once the old key is removed, an app still on it no longer verifies.
    [d] = _deliver(settings, receiver, (new,), {"rotated": "x"}).values()
    Webhook(new).verify(d.body, d.headers, json_parse=False)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(old).verify(d.body, d.headers, json_parse=False)


def test_a_wrong_secret_fails(settings: Settings, receiver: Receiver) -> None:
    key = _key()
    [d] = _deliver(settings, receiver, (key,), {"cr1": None}).values()
    for wrong in (_key(), key[:-1] + bytes([key[-1] ^ 1])):
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            readme_verify(Webhook(wrong), APP, "cr1", d.headers, d.body)


def _clock_moved(monkeypatch: pytest.MonkeyPatch, shift: timedelta) -> None:
    """The package's clock, `shift` from now: what a delivery kept that long meets."""

    class Moved(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Moved:
            return super().now(tz) + shift  # type: ignore[return-value]

    monkeypatch.setattr(webhooks, "datetime", Moved)


def test_the_packages_timestamp_tolerance_applies(settings: Settings, receiver: Receiver,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The timestamp is the attempt's, so the package's 5 minutes run from the sending: a
    delivery replayed 4 minutes later verifies, 6 minutes later (or 6 minutes early, a
    clock ahead) it does not."""
    key = _key()
    [d] = _deliver(settings, receiver, (key,), {"cr1": None}).values()

    def check() -> None:
        readme_verify(Webhook(key), APP, "cr1", d.headers, d.body)

    _clock_moved(monkeypatch, timedelta(minutes=4))
    check()
    _clock_moved(monkeypatch, timedelta(minutes=6))
    with pytest.raises(WebhookVerificationError, match="too old"):
        check()
    _clock_moved(monkeypatch, -timedelta(minutes=6))
    with pytest.raises(WebhookVerificationError, match="too new"):
        check()


# --- one key per app (JOBRUNNER_SIGNING_PER_APP) ------------------------------------------

OTHER = "other-app"


def _signing_key_cli(app_id: str, keys: tuple[bytes, ...], per_app: bool) -> Any:
    env = {"JOBRUNNER_SIGNING_KEYS": ",".join(_whsec(k) for k in keys),
           "JOBRUNNER_SIGNING_PER_APP": "true" if per_app else "false"}
    return CliRunner().invoke(main, ["signing-key", app_id], env=env)


def _printed_keys(app_id: str, keys: tuple[bytes, ...], per_app: bool) -> list[str]:
    result = _signing_key_cli(app_id, keys, per_app)
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def _forged(d: Delivery, key: str, msg_id: str) -> dict[str, str]:
    """`d`'s headers with `msg_id`, signed with `key` as jobrunner signs: what an app that
    holds `key` could send."""
    sent = datetime.fromtimestamp(int(d.headers["webhook-timestamp"]))
    signature = Webhook(key).sign(msg_id, sent, d.body.decode())
    return _with(d, **{"webhook-id": msg_id, "webhook-signature": signature})


@pytest.mark.parametrize("per_app", [False, True], ids=["shared", "per-app"])
def test_with_per_app_keys_no_app_can_sign_for_another(settings: Settings, receiver: Receiver,
                                                       per_app: bool) -> None:
    """Two apps on one worker: each verifies its deliveries with the key `jobrunner
    signing-key` prints for it. Shared (the default), the other app's key is the same one
    and signs a delivery this app accepts; per app, it does not, nor does this app's key
    verify the other's deliveries, nor does the operator's key verify either."""
    master = _key()
    settings = settings.with_(signing_keys=(master,), signing_per_app=per_app)
    store = _register(settings, receiver)
    register(settings, receiver.url, app_id=OTHER).close()
    with ThreadWorker(settings):
        store.schedule(make_job("mine", data={"to": APP}))
        store.schedule(make_job("theirs", app_id=OTHER, data={"to": OTHER}))
        mine, theirs = _delivered(receiver, "mine")[0], _delivered(receiver, "theirs")[0]
    [my_key] = _printed_keys(APP, (master,), per_app)
    [their_key] = _printed_keys(OTHER, (master,), per_app)
    assert readme_verify(Webhook(my_key), APP, "mine", mine.headers, mine.body)[1] == 1
    assert readme_verify(Webhook(their_key), OTHER, "theirs", theirs.headers, theirs.body)[1] == 1
    # What the other app, holding its key, can make of a delivery of its own: one to this
    # app's job, with this app's trigger id.
    forged = _forged(theirs, their_key, mine.headers["webhook-id"])
    if not per_app:
        assert their_key == my_key == _whsec(master)
        assert readme_verify(Webhook(my_key), APP, "mine", forged, theirs.body)[1] == 1
        return
    assert len({my_key, their_key, _whsec(master)}) == 3
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        readme_verify(Webhook(my_key), APP, "mine", forged, theirs.body)
    for d, app_id, name in ((mine, APP, "mine"), (theirs, OTHER, "theirs")):
        wrong = their_key if app_id == APP else my_key
        for key in (wrong, _whsec(master)):
            with pytest.raises(WebhookVerificationError, match="No matching signature"):
                readme_verify(Webhook(key), app_id, name, d.headers, d.body)


def test_per_app_keys_rotate_as_the_configured_ones(settings: Settings,
                                                    receiver: Receiver) -> None:
    """Two configured keys: a signature under each app key derived from them, printed in
    the same order; each verifies."""
    new, old = _key(), _key()
    settings = settings.with_(signing_per_app=True)
    [d] = _deliver(settings, receiver, (new, old), {"rotating": "x"}).values()
    assert len(d.headers["webhook-signature"].split(" ")) == 2
    printed = _printed_keys(APP, (new, old), per_app=True)
    assert printed[0] == _printed_keys(APP, (new,), per_app=True)[0]
    assert printed[1] == _printed_keys(APP, (old,), per_app=True)[0]
    for key in printed:
        assert readme_verify(Webhook(key), APP, "rotating", d.headers, d.body)[1] == 1


def test_signing_key_command() -> None:
    """Shared keys are printed as configured, with a note that every app has them; an
    app's own are a function of the configured key and the app id; without keys or with
    a bad app id, one clear line."""
    a, b = _key(), _key()
    shared = _signing_key_cli(APP, (a, b), per_app=False)
    assert shared.exit_code == 0 and shared.stdout.split() == [_whsec(a), _whsec(b)]
    assert "every app verifies with these same keys" in shared.stderr
    own = _printed_keys(APP, (a,), per_app=True)
    assert own == _printed_keys(APP, (a,), per_app=True) != _printed_keys(OTHER, (a,), True)
    assert own != _printed_keys(APP, (b,), per_app=True)
    assert len(base64.b64decode(own[0].removeprefix("whsec_"))) == 32
    for app_id, keys, says in ((APP, (), "JOBRUNNER_SIGNING_KEYS is not set"),
                               ("a/b", (a,), "app id 'a/b' is invalid")):
        result = _signing_key_cli(app_id, keys, per_app=True)
        assert result.exit_code == 1, result.output
        assert says in result.output and "Traceback" not in result.output
        assert "whsec_" not in result.output


# --- gRPC ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _grpc_app() -> Iterator[tuple[Recorder, int]]:
    servicer = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


def test_grpc_deliveries_are_signed_the_same_way(settings: Settings) -> None:
    """Over OnJobEvent the same three headers come as metadata; the payload is the data's
    type URL and base64 value, which the package verifies even when the value is not
    UTF-8 (a number is a google.protobuf.Value holding a double)."""
    key = _key()
    with _grpc_app() as (app, port):
        grpc_settings = settings.with_(app_url=f"http://127.0.0.1:{port}", app_protocol="grpc",
                                       signing_keys=(key,))
        api = create_app(grpc_settings).test_client()
        worker = ThreadWorker(grpc_settings).start()
        try:
            for name, body in (("seed", SEED_BODY.replace(b'"2s"', b'"0s"')),
                               ("number", b'{"dueTime": "0s", "data": 123.5}'),
                               ("nodata", b'{"dueTime": "0s"}')):
                resp = api.post(f"/v1.0-alpha1/jobs/{name}", data=body,
                                headers={"Content-Type": "application/json"})
                assert resp.status_code == 204, resp.get_data(as_text=True)
            calls = {n: wait_for(lambda n=n: app.named(n), timeout=15, what=n)[0]  # type: ignore[misc]
                     for n in ("seed", "number", "nodata")}
        finally:
            worker.stop()

    with pytest.raises(UnicodeDecodeError):
        calls["number"].request.data.value.decode()
    assert readme_grpc_payload(calls["nodata"].request) == b""
    for call in calls.values():
        payload = readme_grpc_payload(call.request)
        Webhook(key).verify(payload, call.metadata, json_parse=False)
        trigger_id = unquote(call.metadata["jobrunner-trigger-id"])
        assert readme_verify(Webhook(key), APP, call.request.name, call.metadata, payload) \
            == (trigger_id, 1)
        assert "jobrunner-signature" not in call.metadata
        with pytest.raises(WebhookVerificationError, match="another app or job"):
            readme_verify(Webhook(key), APP, "transfer-all-funds", call.metadata, payload)
    seed = calls["seed"].request
    with pytest.raises(WebhookVerificationError):  # the type URL is signed too
        Webhook(key).verify(b"type.googleapis.com/google.protobuf.BytesValue\n"
                            + base64.b64encode(seed.data.value), calls["seed"].metadata,
                            json_parse=False)


def test_grpc_deliveries_are_signed_with_the_apps_own_key(settings: Settings) -> None:
    key = _key()
    with _grpc_app() as (app, port):
        grpc_settings = settings.with_(app_url=f"http://127.0.0.1:{port}", app_protocol="grpc",
                                       signing_keys=(key,), signing_per_app=True)
        api = create_app(grpc_settings).test_client()
        worker = ThreadWorker(grpc_settings).start()
        try:
            resp = api.post("/v1.0-alpha1/jobs/seed", data=SEED_BODY.replace(b'"2s"', b'"0s"'),
                            headers={"Content-Type": "application/json"})
            assert resp.status_code == 204, resp.get_data(as_text=True)
            [call] = wait_for(lambda: app.named("seed"), timeout=15, what="seed")[:1]
        finally:
            worker.stop()
    payload = readme_grpc_payload(call.request)
    [own] = _printed_keys(APP, (key,), per_app=True)
    assert readme_verify(Webhook(own), APP, "seed", call.metadata, payload)[1] == 1
    for wrong in (_whsec(key), *_printed_keys(OTHER, (key,), per_app=True)):
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            readme_verify(Webhook(wrong), APP, "seed", call.metadata, payload)


# --- the setting --------------------------------------------------------------------------


def test_signing_keys_setting_takes_standard_webhooks_secrets() -> None:
    a, b = _key(), os.urandom(24)
    raw = f"{_whsec(a)}, {_whsec(b).rstrip('=')}"  # padding optional, as in the libraries
    settings = Settings.from_env({"JOBRUNNER_SIGNING_KEYS": raw})
    assert settings.signing_keys == (a, b)
    assert Settings.from_env(settings.to_env()).signing_keys == (a, b)
    assert Settings.from_env({}).signing_keys == ()
    per_app = Settings.from_env({"JOBRUNNER_SIGNING_PER_APP": "true"})
    assert per_app.signing_per_app and not Settings.from_env({}).signing_per_app
    assert Settings.from_env(per_app.to_env()).signing_per_app


@pytest.mark.parametrize(("raw", "says"), [
    ("k1:hunter2hunter2hunter2", "kid:secret form"),
    ("hunter2hunter2hunter2", "does not start with whsec_"),
    ("whsec_hunter2!hunter2hunter2", "not base64"),
    (_whsec(b"hunter2-hunter2-16b"), "has 19 bytes"),
    (_whsec(b"hunter2" * 10), "has 70 bytes"),
    (",".join(_whsec(b"hunter2hunter2hunter2hunter2") for _ in range(5)), "at most 4 keys"),
])
def test_signing_keys_setting_refuses_other_forms_without_showing_them(raw: str,
                                                                       says: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(says)) as caught:
        Settings.from_env({"JOBRUNNER_SIGNING_KEYS": raw})
    message = str(caught.value)
    assert "hunter2" not in message and base64.b64encode(b"hunter2")[:8].decode() not in message
    assert "whsec_" in message or "at most" in message  # the form expected, or the count


def test_cli_refuses_an_old_style_key_with_one_clear_line(tmp_path: Path) -> None:
    """`jobrunner worker` (the process that signs) stops at the setting, before Redis."""
    result = CliRunner().invoke(main, ["worker"], env={
        "JOBRUNNER_SIGNING_KEYS": "k1:hunter2hunter2hunter2", "JOBRUNNER_HOME": str(tmp_path),
        "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2, result.output
    assert "JOBRUNNER_SIGNING_KEYS" in result.output and "Traceback" not in result.output
    assert "hunter2" not in result.output
