"""The HTTP API: `create_app()` (the Procfile's and gunicorn's target), routes, OpenAPI."""

from app.api.factory import create_app

__all__ = ["create_app"]
