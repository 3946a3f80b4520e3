"""Who may see and decide, and refusing cross-site writes.

Airflow does not authenticate plugin routes: every route here depends on Airflow's own
``get_user`` (bearer token or the UI's ``_token`` cookie) and asks Airflow's auth manager
whether that user may read (GET) or act on (PUT) the campaign's DAG.
"""

from __future__ import annotations

from typing import Literal

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from fastapi import HTTPException, Request, status

#: Header every write must carry. Browsers cannot send a custom header cross-site without a
#: CORS preflight, which the API server does not grant to other origins.
CSRF_HEADER = "X-Darkroom-CSRF"


def authorize_dag(user: BaseUser, dag_id: str, method: Literal["GET", "PUT"]) -> None:
    """403 unless ``user`` may ``method`` the DAG ``dag_id`` (PUT: decide its runs' assets)."""
    from airflow.models.dag import DagModel  # the ORM: only a request in the API server needs it

    entity = DagAccessEntity.HITL_DETAIL if method == "PUT" else DagAccessEntity.RUN
    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    if not get_auth_manager().is_authorized_dag(method=method, access_entity=entity,
                                                details=details, user=user):
        what = "decide assets of" if method == "PUT" else "see"
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"user {user.get_name()!r} may not {what} DAG {dag_id!r}")


def readable_dag_ids(user: BaseUser) -> set[str]:
    return get_auth_manager().get_authorized_dag_ids(user=user, method="GET")


def check_same_origin(request: Request) -> None:
    """Refuse a write that a browser could have sent from another site (403, nothing changed)."""
    if request.headers.get(CSRF_HEADER) != "1":
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"writes need the header {CSRF_HEADER}: 1 (the gallery sends it; "
                            "scripts using the JSON API should too)")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site write refused")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        expected = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
        if origin.rstrip("/") != expected:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"cross-site write refused: Origin {origin!r} is not {expected!r}")
    elif origin == "null":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site write refused: Origin null")
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != "application/json":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"send the decision as application/json, not {ctype or 'no content type'!r}")
