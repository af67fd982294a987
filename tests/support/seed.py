"""The request the seed's `job-scheduler` program sends, byte for byte (Go's indentation)."""

from __future__ import annotations

# POSTed to /v1.0-alpha1/jobs/R2-D2: a protobuf StringValue in JSON form, due in 2s.
SEED_BODY = b"""{
        "data": {
          "@type": "type.googleapis.com/google.protobuf.StringValue",
          "value": "R2-D2:Oil Change"
        },
        "dueTime": "2s"
    }"""
