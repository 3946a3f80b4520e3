"""The review gallery's FastAPI app, mounted by Airflow's API server at ``/darkroom``.

Pages (HTML, Jinja2 with autoescape):
    GET  /review/                          runs the user may see, with how many assets wait
    GET  /review/{dag_id}/{run_id}         the gallery of one run, a page at a time
JSON API (the same operations, for scripts and chat-ops):
    GET  /api/runs
    GET  /api/runs/{dag_id}/{run_id}/assets     a page: {assets, counts, total, position,
                                                next_after, prev_before}
    GET  /api/assets/{asset_id}
    POST /api/assets/{asset_id}/{approve|reject}            {"note": "..."}
    POST /api/runs/{dag_id}/{run_id}/{approve|reject}       {"asset_ids": [...], "note": "..."}
    POST /api/verify                                        an image's bytes -> darkroom verify's answer
The run's assets, in the gallery and the API, take the same query parameters: filters
``status``, ``channel``, ``qa_failed`` (a check, or ``any``), ``product``, ``audit_sample``
(yes/no), and the page: ``limit`` (default 100, at most 500) with ``after`` or ``before`` (an
asset id: keyset pagination in the order assets were made, so decisions that take assets out
of a status filter skip none, and assets of batches still running arrive on the last page).
Writes need the ``X-Darkroom-CSRF: 1`` header and JSON bodies (see security.py).
Files (only URIs the catalog records; the client names an asset and a kind, never a path):
    GET  /files/thumbnail/{asset_id}       the 256 px review thumbnail (immutable, ETag)
    GET  /files/brand-reference/{asset_id}/{check}/{name}   a reference image a brand check
                                           compared the asset with (one the spec names)
    GET  /files/asset/{asset_id}/{original|<channel>}?w=256
    GET  /files/run/{dag_id}/{run_id}/contact-sheet

Status codes: 401 no or bad credentials, 403 not allowed or cross-site, 404 unknown, 409 the
asset moved on (published, superseded, failed QA) or its run can no longer publish a decision
(its publish step started or ended, or the DAG run was re-processed), 400 a bad request.

Run states come from Airflow (``dag_run.state``, read in the API server); the catalog adds
where the run is in its own life (awaiting review, publishing, published).
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import get_user
from darkroom.catalog import reviews, runs
from darkroom.catalog.db import Catalog
from darkroom.catalog.tables import AssetStatus
from darkroom.config import Settings
from darkroom.errors import ReviewError, StorageError
from darkroom.stages.brand import BRAND_CHECKS, reference_images
from darkroom.stages.postprocess import review_thumbnail
from darkroom.storage import Storage, open_storage, read_uri
from darkroom_operators.hooks import DarkroomHook
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from PIL import Image
from pydantic import BaseModel, Field

from darkroom_review.security import CSRF_HEADER, authorize_dag, check_same_origin, readable_dag_ids

HERE = Path(__file__).resolve().parent
User = Annotated[BaseUser, Depends(get_user)]
Decision = Literal["approve", "reject"]
STATUSES = [s.value for s in AssetStatus]

app = FastAPI(title="Darkroom review", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
templates = Jinja2Templates(env=Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True)))

# Inline script and style are refused: even if some text escaped its escaping, it cannot run.
CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'")


@app.middleware("http")
async def _headers(request: Request, call_next):
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@lru_cache(maxsize=4)
def _catalog_for(url: str) -> Catalog:
    return Catalog(url)


def catalog() -> Catalog:
    # The same catalog the tasks use: DARKROOM_CATALOG_URL, else the `darkroom_catalog`
    # connection (the production stack), else $DARKROOM_HOME's SQLite. Read per request so
    # it follows the API server's environment (and tests' changes).
    return _catalog_for(DarkroomHook().settings().catalog_url)


CatalogDep = Annotated[Catalog, Depends(catalog)]


@lru_cache(maxsize=4)
def _storage_for(url: str, endpoint_url: str | None) -> Storage:
    return open_storage(url, endpoint_url=endpoint_url)


def storage() -> Storage:
    """Where the tasks store files: thumbnails an older run lacks are made into it."""
    settings = DarkroomHook().settings()
    return _storage_for(settings.storage_url, settings.s3_endpoint_url)


def _yes_no(value: str | None, name: str) -> bool | None:
    word = (value or "").strip().lower()
    if not word:
        return None
    if word in ("yes", "true", "1"):
        return True
    if word in ("no", "false", "0"):
        return False
    raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{name}={value!r}: use yes or no (or leave it out)")


class PageQuery:
    """The query parameters of a run's assets (gallery page and JSON API alike)."""

    def __init__(self, status_filter: Annotated[str | None, Query(alias="status")] = None,
                 channel: str | None = None, qa_failed: str | None = None, product: str | None = None,
                 audit_sample: str | None = None, after: str | None = None, before: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=reviews.MAX_PAGE_SIZE)] = reviews.PAGE_SIZE,
                 attempt: Annotated[int | None, Query(ge=0)] = None):
        self.filters = reviews.GalleryFilters(
            status=status_filter or None, channel=channel or None, qa_failed=qa_failed or None,
            product=product or None, audit_sample=_yes_no(audit_sample, "audit_sample"))
        self.after, self.before, self.limit, self.attempt = after or None, before or None, limit, attempt
        # What a link to another page (or another status) keeps: the filters, the page size.
        f = self.filters
        self.kept = {k: v for k, v in {
            "status": f.status, "channel": f.channel, "qa_failed": f.qa_failed, "product": f.product,
            "audit_sample": {True: "yes", False: "no"}.get(f.audit_sample),
            "limit": limit if limit != reviews.PAGE_SIZE else None, "attempt": attempt}.items()
            if v is not None}

    def url(self, **changes) -> str:
        """This query with ``changes`` (a None drops the parameter), as ``?a=b``."""
        q = {k: v for k, v in {**self.kept, **changes}.items() if v is not None}
        return "?" + urlencode(q) if q else "?"

    def page(self, cat: Catalog, run: runs.RunRef) -> reviews.GalleryPage:
        return reviews.run_page(cat, run, self.filters, after=self.after, before=self.before,
                                limit=self.limit)


PageDep = Annotated[PageQuery, Depends()]


@app.exception_handler(ReviewError)
async def _review_error(_request: Request, exc: ReviewError) -> JSONResponse:
    code = (status.HTTP_409_CONFLICT if isinstance(exc, reviews.AssetMovedOn)
            else status.HTTP_404_NOT_FOUND if isinstance(exc, reviews.AssetNotFound)
            else status.HTTP_400_BAD_REQUEST)
    return JSONResponse({"detail": str(exc)}, status_code=code)


def _run_or_404(cat: Catalog, dag_id: str, run_id: str, attempt: int | None = None) -> runs.RunRef:
    run = runs.find_run(cat, dag_id, run_id, attempt)
    if run is None:
        which = f" (attempt {attempt})" if attempt is not None else ""
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"the catalog has no run {run_id!r}{which} of DAG {dag_id!r}")
    return run


def airflow_states(pairs) -> dict[tuple[str, str], str]:
    """Airflow's state of each (dag_id, run_id): what the scheduler knows, not the catalog."""
    pairs = set(pairs)
    if not pairs:
        return {}
    from airflow.models.dagrun import DagRun  # the ORM: only a request in the API server needs it
    from airflow.utils.session import create_session
    from sqlalchemy import select, tuple_

    try:
        with create_session() as session:
            rows = session.execute(select(DagRun.dag_id, DagRun.run_id, DagRun.state).where(
                tuple_(DagRun.dag_id, DagRun.run_id).in_(sorted(pairs)))).all()
    except Exception:  # a database Airflow cannot reach: show the catalog's view only
        return {}
    return {(d, r): str(getattr(st, "value", st)) for d, r, st in rows}


def with_states(rows: list[dict]) -> list[dict]:
    """The runs with Airflow's state (``airflow_state``) and a word on where each is:
    ``awaiting review``, ``publishing``, ``published``, ``replaced`` (a later attempt)."""
    states = airflow_states((r["dag_id"], r["run_id"]) for r in rows)
    newest: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["dag_id"], r["run_id"])
        newest[key] = max(newest.get(key, 0), r.get("attempt", 0))
    for r in rows:
        key = (r["dag_id"], r["run_id"])
        replaced = r.get("attempt", 0) < newest[key]
        r["airflow_state"] = None if replaced else states.get(key)
        r["stage"] = ("replaced by a later attempt" if replaced
                      else r["state"] if r["state"] in ("publishing", "published")
                      else "awaiting review" if r["waiting"] else "")
    return rows


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


# -- pages ------------------------------------------------------------------------------

@app.get("/review/", response_class=HTMLResponse)
def index_page(request: Request, user: User, cat: CatalogDep):
    rows = with_states(runs.recent_runs(cat, readable_dag_ids(user)))
    return templates.TemplateResponse(request, "index.html", {
        "runs": rows, "user": user.get_name(), "base": _base(request)})


@app.get("/review/{dag_id}/{run_id:path}", response_class=HTMLResponse)
def gallery_page(request: Request, dag_id: str, run_id: str, user: User, cat: CatalogDep,
                 query: PageDep):
    authorize_dag(user, dag_id, "GET")
    run = _run_or_404(cat, dag_id, run_id, query.attempt)
    page = query.page(cat, run)
    with_brand_references(cat, run, page.assets)
    last = page.assets[-1]["asset_id"] if page.assets else query.after
    return templates.TemplateResponse(request, "gallery.html", {
        "run": run, "page": page, "assets": page.assets, "facets": reviews.run_facets(cat, run),
        "statuses": STATUSES, "f": query.filters, "query": query, "limit": query.limit,
        "page_size": reviews.PAGE_SIZE,
        "next_url": query.url(after=page.next_after) if page.next_after else "",
        "prev_url": query.url(before=page.prev_before) if page.prev_before else "",
        # The last page asks every few seconds for assets of batches still running.
        "newer_url": (f"{_base(request)}/api/runs/{quote(run.dag_id, safe='')}/{quote(run.run_id, safe='')}"
                      f"/assets{query.url(after=last, limit=1)}" if not page.next_after else ""),
        "newer_page": query.url(after=last),
        "user": user.get_name(), "base": _base(request),
        "csrf_header": CSRF_HEADER, "decidable": {s.value for s in reviews.DECIDABLE},
        "open": reviews.open_for_decisions(cat, run),
        "airflow_state": airflow_states([(run.dag_id, run.run_id)]).get((run.dag_id, run.run_id))})


def _references(cat: Catalog, run: runs.RunRef, asset_type: str, check: str):
    body, path = reviews.campaign_spec(cat, run)
    return reference_images(body, path, asset_type, check, DarkroomHook().settings()) if body else []


def with_brand_references(cat: Catalog, run: runs.RunRef, assets: list[dict]) -> None:
    """``brand_references`` on each asset a brand check failed or doubted: the reference images
    it was compared with (names, at most 6, the ``nearest`` first: the one the check's detail
    names)."""
    found: dict[tuple[str, str], list] = {}
    for a in assets:
        a["brand_references"] = []
        for q in a["qa"]:
            if q["status"] in ("fail", "borderline") and q["check"] in BRAND_CHECKS:
                key = (a["asset_type"], q["check"])
                if key not in found:
                    found[key] = [p.name for p in _references(cat, run, *key)]
                nearest = next((n for n in found[key] if n in (q["detail"] or "")), None)
                names = ([nearest] if nearest else []) + [n for n in found[key] if n != nearest]
                a["brand_references"].append({"check": q["check"], "names": names[:6], "nearest": nearest})


# -- JSON API ---------------------------------------------------------------------------

class DecisionBody(BaseModel):
    note: str = Field("", max_length=reviews.MAX_NOTE)


class BulkBody(BaseModel):
    asset_ids: list[str] = Field(min_length=1, max_length=5000)
    note: str = Field("", max_length=reviews.MAX_NOTE)


@app.get("/api/runs")
def api_runs(user: User, cat: CatalogDep) -> list[dict]:
    return with_states(runs.recent_runs(cat, readable_dag_ids(user)))


@app.get("/api/runs/{dag_id}/{run_id:path}/assets")
def api_run_assets(dag_id: str, run_id: str, user: User, cat: CatalogDep, query: PageDep) -> dict:
    authorize_dag(user, dag_id, "GET")
    run = _run_or_404(cat, dag_id, run_id, query.attempt)
    page = query.page(cat, run)
    with_brand_references(cat, run, page.assets)
    return {"assets": page.assets, "counts": page.counts, "total": page.total,
            "position": page.position, "next_after": page.next_after, "prev_before": page.prev_before}


@app.get("/api/assets/{asset_id}")
def api_asset(asset_id: str, user: User, cat: CatalogDep) -> dict:
    authorize_dag(user, reviews.asset_run(cat, asset_id).dag_id, "GET")
    return reviews.show(cat, asset_id)


def _decision_json(row) -> dict:
    return {"review_id": row.id, "asset_id": row.asset_id, "decision": row.decision,
            "reviewer": row.reviewer, "note": row.note, "at": row.at.isoformat()}


@app.post("/api/assets/{asset_id}/{decision}")
def api_decide(request: Request, asset_id: str, decision: Decision, body: DecisionBody,
               user: User, cat: CatalogDep) -> dict:
    authorize_dag(user, reviews.asset_run(cat, asset_id).dag_id, "PUT")
    check_same_origin(request)
    return _decision_json(reviews.decide(cat, asset_id, decision, user.get_name(), body.note))


@app.post("/api/runs/{dag_id}/{run_id:path}/{decision}")
def api_decide_many(request: Request, dag_id: str, run_id: str, decision: Decision, body: BulkBody,
                    user: User, cat: CatalogDep) -> JSONResponse:
    authorize_dag(user, dag_id, "PUT")
    check_same_origin(request)
    run = _run_or_404(cat, dag_id, run_id)
    decided, refused = [], []
    for asset_id in dict.fromkeys(body.asset_ids):
        try:
            # The path's DAG was authorized: an asset of another run must not ride along.
            if reviews.asset_run(cat, asset_id).pk != run.pk:
                raise reviews.AssetNotFound(f"asset {asset_id!r} is not in run {run_id!r} of {dag_id!r}")
            decided.append(_decision_json(reviews.decide(cat, asset_id, decision, user.get_name(),
                                                        body.note)))
        except ReviewError as exc:
            refused.append({"asset_id": asset_id, "reason": str(exc)})
    code = status.HTTP_200_OK if not refused else status.HTTP_409_CONFLICT
    return JSONResponse({"decided": decided, "refused": refused}, status_code=code)


VERIFY_MAX_BYTES = 50 * 1024 * 1024


@app.post("/api/verify")
async def api_verify(request: Request, user: User, cat: CatalogDep) -> dict:
    """``darkroom verify`` for an uploaded file (its bytes as the body; ``X-Filename``
    optional). Reads only; the answers about an asset need read access to its DAG."""
    from darkroom.stages.verify import verify  # the watermark's and C2PA's readers: on first use
    from starlette.concurrency import run_in_threadpool

    if int(request.headers.get("content-length") or 0) > VERIFY_MAX_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"files over {VERIFY_MAX_BYTES} bytes are refused")
    data = await request.body()
    if not data or len(data) > VERIFY_MAX_BYTES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "send the image file's bytes as the request body")
    result = await run_in_threadpool(verify, data, cat, DarkroomHook().settings(),
                                     file=request.headers.get("x-filename"))
    if result.answers is not None:
        authorize_dag(user, result.answers["origin"]["request"]["dag_id"], "GET")
    return result.to_dict()


# -- files ------------------------------------------------------------------------------

def _image_response(uri: str, width: int | None) -> Response:
    try:
        data = read_uri(uri, endpoint_url=Settings.from_env().s3_endpoint_url)
    except StorageError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    img = Image.open(io.BytesIO(data))
    media = Image.MIME.get(img.format or "", "application/octet-stream")
    if width and img.width > width:
        img.thumbnail((width, width * 4))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="WEBP", quality=80)
        data, media = buf.getvalue(), "image/webp"
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


#: A thumbnail's bytes never change (an asset's original never does): cache it for good.
IMMUTABLE = "private, max-age=31536000, immutable"


@app.get("/files/thumbnail/{asset_id}")
def asset_thumbnail(request: Request, asset_id: str, user: User, cat: CatalogDep,
                    store: Annotated[Storage, Depends(storage)]) -> Response:
    """The review thumbnail postprocess made (an older run's: made now, once, and stored).
    Its sha256 is the ETag; a browser that has it gets 304 without a storage read."""
    authorize_dag(user, reviews.asset_run(cat, asset_id).dag_id, "GET")
    try:
        uri, sha256 = review_thumbnail(cat, store, asset_id)
    except (LookupError, StorageError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    headers = {"ETag": f'"{sha256}"', "Cache-Control": IMMUTABLE}
    if headers["ETag"] in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    try:
        data = read_uri(uri, s3_client=getattr(store, "client", None))
    except StorageError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return Response(data, media_type="image/webp", headers=headers)


@app.get("/files/brand-reference/{asset_id}/{check}/{name}")
def brand_reference(asset_id: str, check: str, name: str, user: User, cat: CatalogDep) -> Response:
    """A brand reference image, only one of those the asset's brand check reads (by name
    from the folder the spec names: the client never gives a path)."""
    run = reviews.asset_run(cat, asset_id)
    authorize_dag(user, run.dag_id, "GET")
    asset_type = reviews.show(cat, asset_id)["asset_type"]
    path = next((p for p in _references(cat, run, asset_type, check) if p.name == name), None)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"{name!r} is no brand reference of check {check!r} for asset {asset_id!r}")
    # Brand files can be replaced in place: cache for an hour, not for good.
    return Response(path.read_bytes(), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


@app.get("/files/asset/{asset_id}/{kind}")
def asset_file(asset_id: str, kind: str, user: User, cat: CatalogDep,
               w: Annotated[int | None, Query(ge=16, le=4096)] = None) -> Response:
    authorize_dag(user, reviews.asset_run(cat, asset_id).dag_id, "GET")
    return _image_response(reviews.file_uri(cat, asset_id, kind), w)


@app.get("/files/run/{dag_id}/{run_id:path}/contact-sheet")
def contact_sheet(dag_id: str, run_id: str, user: User, cat: CatalogDep) -> Response:
    authorize_dag(user, dag_id, "GET")
    run = _run_or_404(cat, dag_id, run_id)
    if not run.contact_sheet_uri:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"run {run_id!r} has no contact sheet yet; the track task makes it")
    return _image_response(run.contact_sheet_uri, None)

