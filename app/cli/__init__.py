"""The `jobrunner` command line (click); the console script is `jobrunner = app.cli:main`."""

from app.cli.main import main

__all__ = ["main"]
