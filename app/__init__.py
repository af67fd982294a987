"""jobrunner: the Dapr Jobs building block on Redis.

One folder per layer; the dependency rule, enforced by the import-linter contracts in
pyproject.toml (`lint-imports`, run by tests/test_quality.py):

    app.cli          click commands                      may use everything below
    app.processes    supervisor, background service,     starts processes; uses api, grpc,
                     embedded Redis, API server          store, jobs
    app.api          the HTTP API (Flask)                } siblings: never import each other;
    app.grpc         the Dapr gRPC API (grpcio)          } each uses store, settings, jobs
    workers          claim, deliver, settle (top level)  }
    app.ui           the dashboard at /ui (Flask         served by app.api; uses store,
                     blueprint, Jinja, vendored htmx)    settings, jobs
    app.store        Redis: keys, Lua scripts, store, dead letters, clients
    app.settings     every setting, from the environment
    app.logs         the one log format of every process (standard library logging)
    app.jobs         the domain: job model, schedules, cron, durations, data formats,
                     validation, errors. Pure: no Flask, click, gRPC, redis or I/O.

Only `app.cli` and `app.processes` start processes (a contract: nothing else imports
subprocess or multiprocessing). The threads a layer needs for itself stay in it: the API's
registration heartbeat, the gRPC server's loop, a worker's metrics endpoint. Child
processes are started with `python -P` so that the caller's folder (which may hold its own
`app/`) is never on their import path.
"""
