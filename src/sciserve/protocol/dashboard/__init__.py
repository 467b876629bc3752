"""The web dashboard ``sciserve serve`` shows under ``/``: the model
catalogue, model pages with live charts, server health and logins.

A thin adapter over the service the REST API serves (:mod:`.app`); its
pages are rendered on the server from the templates shipped here, with a
small script and style sheet of its own and nothing fetched from elsewhere.
"""

from .app import HEALTH_PATH, Dashboard

__all__ = ["HEALTH_PATH", "Dashboard"]
