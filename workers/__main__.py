import sys

from app.settings import Settings
from workers.main import run_worker

sys.exit(run_worker(Settings.from_env()))
