"""The dashboard at /ui, served by the HTTP API (app.api registers `ui_bp`).

Server-rendered pages (Flask blueprint, Jinja templates under templates/jobrunner_ui/)
with vendored static files (static/: htmx, the stylesheet); no build step, no CDN. Uses
the store, the settings and the domain; never the API, the gRPC API or the workers.
"""

from app.ui.auth import is_ui_path, ui_gate
from app.ui.views import ui_bp, unrouted_page

__all__ = ["is_ui_path", "ui_bp", "ui_gate", "unrouted_page"]
