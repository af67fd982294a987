"""A token-less API answers no other site's web page (app/api/callers.py).

A page the developer opens can call a port on their loopback: blind "simple" POSTs from
its own origin (which the browser names in `Origin`), or, once it rebinds its host name to
127.0.0.1, any request whose answer it reads (its name in `Host`). Without
DAPR_API_TOKEN the API refuses both with a 403, before acting; SDKs, the CLI and curl
(an IP address or localhost, no `Origin`) are served as before, and so are the probes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from flask.testing import FlaskClient

from app.api.callers import host_allowed
from app.api.factory import create_app
from app.jobs import errors
from app.settings import MAX_ALLOWED_HOSTS, Settings, SettingsError
from tests.support.redis_proc import RedisProcess
from tests.test_api_helpers import api_settings, assert_error, assert_store_consistent

TOKEN = "s3cret"
BASE = "/v1.0-alpha1/jobs"
REBOUND = "attacker.example:6280"


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    return api_settings(redis_server.url,
                        allowed_hosts=("jobrunner", "job_runner", ".svc.internal"))


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    with create_app(settings).test_client() as c:
        yield c


# Every kind of route: the jobs API (the schedule shortcut's too), the bulk route, the
# controls, the dead letters, /metrics and the dashboard.
ROUTES = [
    ("POST", f"{BASE}/j", b'{"dueTime": "1h"}'),
    ("PUT", f"{BASE}/j", b'{"dueTime": "1h"}'),
    ("GET", f"{BASE}/j", None),
    ("GET", BASE, None),
    ("POST", BASE, b'{"jobs": [{"name": "j", "dueTime": "1h"}]}'),
    ("POST", f"{BASE}/j/pause", None),
    ("POST", "/v1.0-alpha1/app/pause", None),
    ("POST", "/v1.0-alpha1/deadletters/replay", b'{"all": true}'),
    ("DELETE", "/v1.0-alpha1/deadletters?all=true", None),
    ("GET", "/metrics", None),
    ("GET", "/ui/jobs", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(("headers", "code"), [
    ({"Host": REBOUND}, errors.HOST_NOT_ALLOWED),
    ({"Host": "ATTACKER.example"}, errors.HOST_NOT_ALLOWED),
    ({"Host": "jobrunner.attacker.example"}, errors.HOST_NOT_ALLOWED),
    ({"Host": "127.0.0.1.attacker.example"}, errors.HOST_NOT_ALLOWED),
    ({"Host": "localhost", "Origin": "https://attacker.example"}, errors.CROSS_SITE),
    ({"Host": "127.0.0.1:6280", "Origin": "http://127.0.0.1:9999"}, errors.CROSS_SITE),
    ({"Host": "127.0.0.1:6280", "Origin": "null"}, errors.CROSS_SITE),
    ({"Host": "localhost", "Origin": "https://localhost"}, errors.CROSS_SITE),
    ({"Host": "localhost:6280", "Origin": "http://user@localhost:6280"}, errors.CROSS_SITE),
    ({"Host": "localhost."}, errors.HOST_NOT_ALLOWED),
    ({"Host": "..localhost"}, errors.HOST_NOT_ALLOWED),
    ({"Host": "[::1%25lo]:6280"}, errors.HOST_NOT_ALLOWED),
], ids=["rebound", "rebound-upper", "allowed-name-as-prefix", "ip-as-prefix", "cross-site",
        "other-port", "opaque-origin", "other-scheme", "userinfo", "trailing-dot",
        "empty-label", "ipv6-zone"])
def test_another_sites_page_is_refused_before_anything_is_done(
        client: FlaskClient, settings: Settings, redis_client: redis.Redis, method: str,
        path: str, body: bytes | None, headers: dict[str, str], code: str) -> None:
    assert client.post(f"{BASE}/keep", json={"dueTime": "1h"}).status_code == 204
    before = assert_store_consistent(redis_client, settings)
    response = client.open(path, method=method, data=body,
                           headers={"Content-Type": "text/plain", **headers})
    said = assert_error(response, 403, code)["message"]
    assert ("DAPR_API_TOKEN" in said) and ("JOBRUNNER_ALLOWED_HOSTS" in said
                                           or code == errors.CROSS_SITE)
    assert assert_store_consistent(redis_client, settings) == before == {"job-service/keep"}
    assert client.get("/v1.0-alpha1/app").get_json()["paused"] is False


@pytest.mark.parametrize("host", [
    "127.0.0.1:6280", "127.0.0.1", "[::1]:6280", "10.1.2.3", "localhost:6280", "LOCALHOST",
    "app.localhost:6280", "jobrunner:3500", "jobrunner", "job_runner:3500", "api.svc.internal",
    "svc.internal:80",
])
def test_ip_addresses_localhost_and_the_allowed_names_are_served(client: FlaskClient,
                                                                 host: str) -> None:
    assert client.post(f"{BASE}/j", json={"dueTime": "1h"},
                       headers={"Host": host}).status_code == 204
    got = client.get(f"{BASE}/j", headers={"Host": host, "Origin": f"http://{host}"})
    assert got.status_code == 200 and got.get_json()["name"] == "j"
    if ":" not in host.rpartition("]")[2]:  # no port: the scheme's own, said or not
        got = client.get(f"{BASE}/j", headers={"Host": host, "Origin": f"http://{host}:80"})
        assert got.status_code == 200, got.get_data(as_text=True)
    assert client.get("/ui/jobs", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/v1.0/healthz", "/openapi.json"])
def test_probes_are_served_whatever_the_host(client: FlaskClient, path: str) -> None:
    assert client.get(path, headers={"Host": REBOUND}).status_code in (200, 204)


def test_with_a_token_the_token_decides(redis_server: RedisProcess) -> None:
    """A page cannot send the token (a custom header needs a preflight, never granted):
    callers that can are served by any name, as before."""
    settings = api_settings(redis_server.url, api_token=TOKEN)
    with create_app(settings).test_client() as client:
        headers = {"Host": REBOUND, "Origin": "https://attacker.example"}
        assert_error(client.post(f"{BASE}/j", data=b'{"dueTime": "1h"}', headers=headers),
                     401, errors.UNAUTHORIZED)
        assert client.post(f"{BASE}/j", data=b'{"dueTime": "1h"}',
                           headers={**headers, "dapr-api-token": TOKEN}).status_code == 204


def test_a_malformed_host_is_not_allowed() -> None:
    for host in ("", "a b", "127.0.0.1:99999", "[::1", "evil.example/x", "é.example"):
        assert not host_allowed(host, ())


def test_allowed_hosts_are_read_and_checked() -> None:
    env = {"JOBRUNNER_ALLOWED_HOSTS": " JobRunner , .svc.internal,job_runner,,"}
    wanted = ("jobrunner", ".svc.internal", "job_runner")
    assert Settings.from_env(env).allowed_hosts == wanted
    assert Settings.from_env(Settings.from_env(env).to_env()).allowed_hosts == wanted
    for bad in ("jobrunner:3500", "http://jobrunner", "a b", "-x", "x..y", "..x", "x."):
        with pytest.raises(SettingsError, match="JOBRUNNER_ALLOWED_HOSTS"):
            Settings.from_env({"JOBRUNNER_ALLOWED_HOSTS": bad})
    with pytest.raises(SettingsError, match=f"at most {MAX_ALLOWED_HOSTS}"):
        Settings.from_env({"JOBRUNNER_ALLOWED_HOSTS": ",".join(
            f"h{i}" for i in range(MAX_ALLOWED_HOSTS + 1))})
