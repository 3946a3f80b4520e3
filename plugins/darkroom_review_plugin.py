"""The Darkroom review gallery, served by Airflow's API server under ``/darkroom``.

Airflow loads this file from the plugins folder; the app lives in the ``darkroom_review``
package beside it (listed in ``.airflowignore`` so the loader does not import it twice).
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

# Airflow puts the plugins folder on sys.path in its own processes; tests and tools that
# load this file directly may not.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from darkroom_review.app import app  # noqa: E402


class DarkroomReviewPlugin(AirflowPlugin):
    name = "darkroom_review"
    fastapi_apps = [{"app": app, "url_prefix": "/darkroom", "name": "Darkroom review"}]
    external_views = [{
        "name": "Review gallery",
        "href": "/darkroom/review/",
        "destination": "nav",
        "category": "browse",
        "url_route": "darkroom_review",
    }]
