"""`python -P -m app.cli`: how jobrunner starts its own child processes."""

from app.cli.main import main

main(prog_name="jobrunner")
