"""`python -m workers`: one worker process, as `jobrunner up` and `run` start them. What
stops it at start is one line, as `jobrunner worker` prints it, not a traceback."""

import sys

from app.settings import Settings, SettingsError
from workers.main import run_worker

try:
    code = run_worker(Settings.from_env())
except SettingsError as e:
    print(f"Error: {e}", file=sys.stderr)
    code = 2
except OSError as e:  # the metrics port taken, ...
    print(f"Error: {e}", file=sys.stderr)
    code = 1
sys.exit(code)
