"""The Dapr gRPC API: the jobs methods of `dapr.proto.runtime.v1.Dapr`, on the same
domain (app.jobs) and store (app.store) as the HTTP API (app.api), never importing it.

- service.py: the servicer (every other Dapr method answers UNIMPLEMENTED).
- convert.py: Dapr's Job message <-> the fields validation takes, and a stored job.
- errors.py:  ApiError -> a gRPC status in Dapr's shape (google.rpc.ErrorInfo).
- server.py:  builds the grpc.Server (token check, message bounds); app.processes
  starts it, beside the HTTP app in each API process.

The messages and service stubs are those the official `dapr` package ships.
"""
