"""The review gallery, served by a real ``airflow api-server`` with our plugins folder.

Covers access (401/403), cross-site refusal, escaping of hostile catalog text and notes,
409 on assets that moved on, the JSON API, images served only from catalog URIs, and the
gallery page itself.
"""

from __future__ import annotations

import json

import pytest
from darkroom.catalog import Catalog
from darkroom.catalog.tables import Asset, AssetStatus, Review
from sqlalchemy import func, select

from tests.support.campaigns import XSS, XSS_NAME

pytestmark = pytest.mark.e2e  # starts Airflow's API server


def _reviews(filled) -> int:
    with Catalog(filled.catalog_url).session() as s:
        return s.scalar(select(func.count()).select_from(Review))


def _status(filled, asset_id: str) -> str:
    with Catalog(filled.catalog_url).session() as s:
        return s.get(Asset, asset_id).status


def _gallery(filled) -> str:
    from urllib.parse import quote

    return f"/darkroom/review/{quote(filled.dag_id)}/{quote(filled.run_id, safe='')}"


WRITE = {"X-Darkroom-CSRF": "1"}


def test_plugin_is_listed_with_its_nav_entry(server):
    code, _, body = server.request("GET", "/api/v2/plugins")
    assert code == 200, body
    plugins = {p["name"]: p for p in json.loads(body)["plugins"]}
    plugin = plugins["darkroom_review"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/darkroom"
    assert plugin["external_views"][0]["href"] == "/darkroom/review/"


@pytest.mark.parametrize("path", [
    "/darkroom/review/",
    "GALLERY",
    "/darkroom/api/runs",
    "ASSET",
    "FILE",
    "THUMBNAIL",
    "BRAND",
])
def test_every_read_needs_a_user(server, filled, path):
    path = (path.replace("GALLERY", _gallery(filled))
            .replace("ASSET", f"/darkroom/api/assets/{filled.asset_ids[0]}")
            .replace("FILE", f"/darkroom/files/asset/{filled.asset_ids[0]}/original")
            .replace("THUMBNAIL", f"/darkroom/files/thumbnail/{filled.asset_ids[0]}"))
    if path == "BRAND":  # a reference beside a brand check in doubt
        from darkroom.catalog.tables import QAResult

        with Catalog(filled.catalog_url).session() as s:
            if s.scalar(select(QAResult).where(QAResult.asset_id == filled.asset_ids[4],
                                               QAResult.check == "brand_hash")) is None:
                s.add(QAResult(asset_id=filled.asset_ids[4], check="brand_hash", value=20.0, threshold=28.0,
                               passed=True, status="borderline", detail="phash distance to studio_1.png 20"))
        path = f"/darkroom/files/brand-reference/{filled.asset_ids[4]}/brand_hash/studio_1.png"
    assert server.request("GET", path, user=None)[0] == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert server.request("GET", path, user=None, headers=bad)[0] in (401, 403)
    assert server.request("GET", path, user="viewer")[0] == 200


def test_unauthenticated_and_viewer_decisions_change_nothing(server, filled):
    asset = filled.asset_ids[0]
    before = _reviews(filled)
    path = f"/darkroom/api/assets/{asset}/approve"
    assert server.request("POST", path, user=None, body={"note": "x"}, headers=WRITE)[0] == 401
    code, _, body = server.request("POST", path, user="viewer", body={"note": "x"}, headers=WRITE)
    assert code == 403, body
    assert b"viewer" in body
    bulk = f"/darkroom/api/runs/{filled.dag_id}/{filled.run_id}/approve"
    assert server.request("POST", bulk, user="viewer", body={"asset_ids": [asset]}, headers=WRITE)[0] == 403
    assert _reviews(filled) == before
    assert _status(filled, asset) == AssetStatus.qa_passed


@pytest.mark.parametrize("headers, raw, code", [
    ({}, None, 403),  # no custom header: a plain cross-site form or fetch cannot add one
    ({"X-Darkroom-CSRF": "1", "Origin": "https://evil.example"}, None, 403),
    ({"X-Darkroom-CSRF": "1", "Sec-Fetch-Site": "cross-site"}, None, 403),
    ({"X-Darkroom-CSRF": "1", "Origin": "null"}, None, 403),
    ({"X-Darkroom-CSRF": "1", "Content-Type": "text/plain"}, b'{"note": "x"}', 422),
], ids=["no-header", "foreign-origin", "sec-fetch-cross-site", "null-origin", "text-plain"])
def test_cross_site_writes_are_refused(server, filled, headers, raw, code):
    asset = filled.asset_ids[1]
    before = _reviews(filled)
    body = None if raw else {"note": "x"}
    got, _, text = server.request("POST", f"/darkroom/api/assets/{asset}/approve", body=body, raw=raw,
                                  headers=headers)
    assert got == code, text
    assert _reviews(filled) == before and _status(filled, asset) == AssetStatus.qa_passed


def test_same_origin_write_is_accepted_and_records_the_airflow_user(server, filled):
    asset = filled.asset_ids[1]
    origin = {"Origin": server.url, **WRITE}
    code, _, body = server.request("POST", f"/darkroom/api/assets/{asset}/reject",
                                   body={"note": "logo cut off"}, headers=origin)
    assert code == 200, body
    data = json.loads(body)
    assert data["reviewer"] == "admin" and data["decision"] == "rejected"
    with Catalog(filled.catalog_url).session() as s:
        row = s.scalars(select(Review).where(Review.asset_id == asset).order_by(Review.id.desc())).first()
        assert (row.reviewer, row.note, row.decision) == ("admin", "logo cut off", "rejected")
    assert _status(filled, asset) == AssetStatus.rejected


def test_gallery_escapes_prompts_and_notes(server, filled):
    hostile = filled.asset_ids[0]
    note = '</textarea><script>window.__xss=3</script>'
    code, _, body = server.request("POST", f"/darkroom/api/assets/{filled.asset_ids[2]}/approve",
                                   body={"note": note}, headers=WRITE)
    assert code == 200, body
    code, headers, page = server.request("GET", _gallery(filled))
    assert code == 200, page
    html = page.decode()
    assert "<script>window.__xss" not in html and 'onerror="window.__xss' not in html
    assert "&lt;script&gt;window.__xss=2&lt;/script&gt;" in html  # the product name, escaped
    assert "&lt;img src=x onerror=" in html                         # the colour, in the prompt
    assert "&lt;script&gt;window.__xss=3&lt;/script&gt;" in html    # the note
    assert "script-src 'self'" in headers["content-security-policy"]
    assert hostile in html
    shown = json.loads(server.request("GET", f"/darkroom/api/assets/{hostile}")[2])
    assert XSS in shown["prompt"] and XSS_NAME.split(" mug")[0] in shown["prompt"]


def test_decision_on_an_asset_that_moved_on_is_409(server, filled):
    asset = filled.asset_ids[3]
    with Catalog(filled.catalog_url).session() as s:
        s.get(Asset, asset).status = AssetStatus.published
    before = _reviews(filled)
    code, _, body = server.request("POST", f"/darkroom/api/assets/{asset}/reject", body={}, headers=WRITE)
    assert code == 409, body
    assert "published" in json.loads(body)["detail"]
    assert _reviews(filled) == before and _status(filled, asset) == AssetStatus.published
    failed = filled.asset_ids[-1]
    code, _, body = server.request("POST", f"/darkroom/api/assets/{failed}/approve", body={}, headers=WRITE)
    assert code == 409 and "qa_failed" in json.loads(body)["detail"]
    bulk = f"/darkroom/api/runs/{filled.dag_id}/{filled.run_id}/approve"
    code, _, body = server.request("POST", bulk, body={"asset_ids": [failed, asset]}, headers=WRITE)
    assert code == 409 and not json.loads(body)["decided"] and len(json.loads(body)["refused"]) == 2
    assert _reviews(filled) == before
    missing = server.request("POST", "/darkroom/api/assets/nope/approve", body={}, headers=WRITE)
    assert missing[0] == 404


def _set_run_state(filled, state: str) -> None:
    from darkroom.catalog.tables import Run

    with Catalog(filled.catalog_url).session() as s:
        s.scalar(select(Run).where(Run.dag_id == filled.dag_id, Run.run_id == filled.run_id)).state = state


def test_a_finished_runs_gallery_refuses_late_decisions_and_shows_no_buttons(server, filled):
    """A rejected asset of a run that published: approving it would never publish it, so the
    API refuses with 409 and the reason, and the gallery offers no decision buttons."""
    rejected = filled.asset_ids[1]
    code, _, body = server.request("POST", f"/darkroom/api/assets/{rejected}/reject", body={},
                                   headers=WRITE)
    assert code == 200, body  # while the run still waits, decisions take effect
    open_page = server.request("GET", _gallery(filled))[2].decode()
    assert 'data-decision="approve"' in open_page and 'id="bulk-approve"' in open_page
    assert "Decisions are closed" not in open_page
    _set_run_state(filled, "published")
    try:
        before = _reviews(filled)
        code, _, body = server.request("POST", f"/darkroom/api/assets/{rejected}/approve", body={},
                                       headers=WRITE)
        assert code == 409, body
        detail = json.loads(body)["detail"]
        assert "has published" in detail and "darkroom regenerate" in detail
        bulk = f"/darkroom/api/runs/{filled.dag_id}/{filled.run_id}/approve"
        code, _, body = server.request("POST", bulk, body={"asset_ids": [rejected]}, headers=WRITE)
        assert code == 409 and not json.loads(body)["decided"], body
        assert _reviews(filled) == before and _status(filled, rejected) == AssetStatus.rejected
        page = server.request("GET", _gallery(filled))[2].decode()
        assert "Decisions are closed for this run" in page and "its publish step has run" in page
        assert 'data-decision="approve"' not in page and 'id="bulk-approve"' not in page
        assert 'data-decidable="1"' not in page
    finally:
        _set_run_state(filled, "running")


def test_run_index_shows_airflows_state_of_each_run(server, filled):
    """The run list reads each run's state from Airflow's metadata database (a failed DAG
    run is "failed", whatever the catalog last wrote); a run Airflow does not know shows "-"."""
    import sqlite3
    from datetime import UTC, datetime

    # Who may read which DAG's runs comes from Airflow's dag table: the DAG, as its processor
    # would have written it (this API server parses no DAG files).
    with sqlite3.connect(server.airflow_db) as db:
        db.execute("INSERT OR IGNORE INTO dag_bundle (name, active) VALUES ('dags-folder', 1)")
        db.execute("INSERT INTO dag (dag_id, is_paused, is_stale, bundle_name, timetable_type, "
                   "partition_mapper_info, max_active_tasks, max_consecutive_failed_dag_runs, "
                   "has_task_concurrency_limits) VALUES (?, 0, 0, 'dags-folder', 'NullTimetable', "
                   "'{}', 16, 0, 0)", (filled.dag_id,))
    rows = json.loads(server.request("GET", "/darkroom/api/runs")[2])
    ours = [r for r in rows if r["run_id"] == filled.run_id]
    assert ours and ours[0]["airflow_state"] is None and ours[0]["state"] == "running"
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(server.airflow_db) as db:
        db.execute("INSERT INTO dag_run (dag_id, run_id, state, run_type, run_after, clear_number, "
                   "span_status) VALUES (?, ?, 'failed', 'manual', ?, 0, 'not_started')",
                   (filled.dag_id, filled.run_id, now))
    try:
        rows = json.loads(server.request("GET", "/darkroom/api/runs")[2])
        assert [r["airflow_state"] for r in rows if r["run_id"] == filled.run_id] == ["failed"]
        html = server.request("GET", "/darkroom/review/")[2].decode()
        assert '<td class="state st-failed">failed</td>' in html
        assert "Airflow state <b>failed</b>" in server.request("GET", _gallery(filled))[2].decode()
    finally:
        with sqlite3.connect(server.airflow_db) as db:
            db.execute("DELETE FROM dag_run WHERE dag_id = ? AND run_id = ?", (filled.dag_id, filled.run_id))
            db.execute("DELETE FROM dag WHERE dag_id = ?", (filled.dag_id,))


def test_json_api_pages_filters_and_counts(server, filled):
    base = f"/darkroom/api/runs/{filled.dag_id}/{filled.run_id}/assets"
    code, _, body = server.request("GET", base + "?limit=4")
    assert code == 200, body
    first = json.loads(body)
    assert [r["asset_id"] for r in first["assets"]] == filled.asset_ids[:4]
    assert all({"prompt", "seed", "model", "params", "qa", "channels"} <= r.keys() for r in first["assets"])
    assert (first["total"], first["position"], first["prev_before"]) == (6, 0, None)
    assert sum(first["counts"].values()) == 6 and first["counts"]["qa_failed"] == 1
    second = json.loads(server.request("GET", f"{base}?limit=4&after={first['next_after']}")[2])
    assert [r["asset_id"] for r in second["assets"]] == filled.asset_ids[4:]
    assert (second["position"], second["next_after"], second["prev_before"]) == (4, None, filled.asset_ids[4])
    only = json.loads(server.request("GET", base + "?channel=web_tile&status=qa_failed&qa_failed=blur")[2])
    assert [r["asset_id"] for r in only["assets"]] == [filled.asset_ids[-1]] and only["total"] == 1
    assert json.loads(server.request("GET", base + "?audit_sample=yes")[2])["assets"] == []
    for bad in ("?status=aproved", "?audit_sample=maybe", "?after=nope", "?limit=0"):
        code, _, body = server.request("GET", base + bad)
        assert code in (400, 422), (bad, code, body)
    assert server.request("GET", f"/darkroom/api/runs/{filled.dag_id}/no-such-run/assets")[0] == 404


def test_thumbnails_are_made_once_and_cached_for_good(server, filled):
    """Postprocess made each thumbnail; the gallery serves it with its sha256 as ETag and an
    immutable Cache-Control, and answers 304 to a browser that has it. An asset without one
    (an older run) gets it made on the first request and stored: the next request is served
    without the original (here: moved away)."""
    import hashlib
    import io
    from pathlib import Path
    from urllib.parse import urlparse

    from PIL import Image

    made, lacking = filled.asset_ids[0], filled.asset_ids[2]
    with Catalog(filled.catalog_url).session() as s:
        sha = s.get(Asset, made).thumbnail_sha256
        row = s.get(Asset, lacking)
        row.thumbnail_uri = row.thumbnail_sha256 = None
        original = Path(urlparse(row.uri).path)
    assert sha
    code, headers, data = server.request("GET", f"/darkroom/files/thumbnail/{made}")
    assert code == 200 and headers["content-type"] == "image/webp"
    assert headers["etag"] == f'"{sha}"' and hashlib.sha256(data).hexdigest() == sha
    assert "immutable" in headers["cache-control"] and "max-age=31536000" in headers["cache-control"]
    assert max(Image.open(io.BytesIO(data)).size) <= 256
    code, headers, data = server.request("GET", f"/darkroom/files/thumbnail/{made}",
                                         headers={"If-None-Match": f'"{sha}"'})
    assert (code, data, headers["etag"]) == (304, b"", f'"{sha}"')

    code, _, data = server.request("GET", f"/darkroom/files/thumbnail/{lacking}")
    assert code == 200
    with Catalog(filled.catalog_url).session() as s:
        row = s.get(Asset, lacking)
        assert row.thumbnail_sha256 == hashlib.sha256(data).hexdigest()
        assert "/thumbnails/" in row.thumbnail_uri
    moved = original.with_suffix(".moved")
    original.rename(moved)
    try:
        code, _, again = server.request("GET", f"/darkroom/files/thumbnail/{lacking}")
        assert (code, again) == (200, data)
        assert server.request("GET", f"/darkroom/files/asset/{lacking}/original")[0] == 404  # it is gone
    finally:
        moved.rename(original)
    assert server.request("GET", "/darkroom/files/thumbnail/nope")[0] == 404
    assert server.request("GET", f"/darkroom/files/thumbnail/{made}", user=None)[0] == 401


def test_gallery_pages_keep_the_filters(server, filled):
    page = server.request("GET", _gallery(filled) + "?limit=4&channel=web_tile")[2].decode()
    assert page.count('<article class="card') == 4 and "1–4 of 6" in page
    assert 'rel="next"' in page and 'rel="prev"' not in page
    assert f"?channel=web_tile&amp;limit=4&amp;after={filled.asset_ids[3]}" in page
    assert f"/files/thumbnail/{filled.asset_ids[0]}" in page and "original?w=" not in page


def test_files_come_only_from_catalog_uris(server, filled):
    asset = filled.asset_ids[0]
    code, headers, data = server.request("GET", f"/darkroom/files/asset/{asset}/original")
    assert code == 200 and data[:8] == b"\x89PNG\r\n\x1a\n" and headers["content-type"] == "image/png"
    code, headers, data = server.request("GET", f"/darkroom/files/asset/{asset}/web_tile?w=128")
    assert code == 200 and headers["content-type"] == "image/webp"
    for probe in ("..%2F..%2F..%2Fetc%2Fpasswd", "file:%2F%2F%2Fetc%2Fpasswd"):
        assert server.request("GET", f"/darkroom/files/asset/{asset}/{probe}")[0] == 404
    sheet = server.request("GET", f"/darkroom/files/run/{filled.dag_id}/{filled.run_id}/contact-sheet")
    assert sheet[0] == 200 and sheet[2][:4] == b"\x89PNG"


def test_reviewer_decides_by_clicking_in_headless_chromium(server, filled, tmp_path):
    """A reviewer with the UI's session cookie opens the gallery, approves one asset by
    clicking (with a note), rejects another from the keyboard; then publish copies exactly
    the approved assets. Screenshots go to tmp_path, and to docs/screenshots/ when
    DARKROOM_UPDATE_SCREENSHOTS=1."""
    import os
    import shutil

    from darkroom.catalog.tables import Publication
    from darkroom.stages import publish
    from darkroom.stages.context import RunContext

    from tests.conftest import unavailable
    from tests.plugins.browser import Chromium
    from tests.plugins.conftest import ROOT, chromium_binary

    binary = chromium_binary()
    if binary is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    with Catalog(filled.catalog_url).session() as s:
        waiting = [a for a in filled.asset_ids if s.get(Asset, a).status == AssetStatus.qa_passed]
    assert len(waiting) >= 2, waiting
    approve_id, reject_id = waiting[0], waiting[-1]
    browser = Chromium(binary)
    try:
        browser.call("Network.setCookie", name="_token", value=server.tokens["admin"], url=server.url,
                     httpOnly=True, sameSite="Lax")
        browser.goto(server.url + _gallery(filled))
        browser.wait_for("document.querySelectorAll('article.card').length > 0")
        assert browser.eval("document.querySelectorAll('article.card').length") == len(filled.asset_ids)
        assert browser.eval("typeof window.__xss") == "undefined"  # the hostile prompt stayed text
        # Thumbnails come through the files endpoint with the same cookie (lazy: first row only).
        browser.wait_for("document.querySelector('article.card img').naturalWidth > 0")

        card = f'article[data-asset="{approve_id}"]'
        browser.type_text(f"{card} .cardnote", "colours match the brief")
        browser.click(f"{card} button.approve")
        browser.wait_for(f"document.querySelector('{card}').dataset.status === 'approved'")

        other = f'article[data-asset="{reject_id}"]'
        browser.click(f"{other} .product")  # focus the card, then the shortcut
        browser.key("r")
        browser.wait_for(f"document.querySelector('{other}').dataset.status === 'rejected'")

        browser.click(f"{card} details.info summary")
        shots = [tmp_path / "review-gallery.png", tmp_path / "review-full-size.png"]
        browser.screenshot(shots[0])
        browser.click(f"{card} .thumb")
        browser.wait_for("document.getElementById('full').open && document.getElementById('full-img').complete")
        browser.screenshot(shots[1], full_page=False)
    finally:
        browser.close()
    assert all(p.stat().st_size > 10_000 for p in shots)
    if os.environ.get("DARKROOM_UPDATE_SCREENSHOTS") == "1":
        for p in shots:
            shutil.copy(p, ROOT / "docs" / "screenshots" / p.name)

    with Catalog(filled.catalog_url).session() as s:
        latest = {a: s.scalars(select(Review).where(Review.asset_id == a).order_by(Review.id.desc())).first()
                  for a in (approve_id, reject_id)}
    assert (latest[approve_id].decision, latest[approve_id].reviewer, latest[approve_id].note) == (
        "approved", "admin", "colours match the brief")
    assert (latest[reject_id].decision, latest[reject_id].reviewer) == ("rejected", "admin")

    # The rest of the DAG run: publish takes exactly what was approved.
    ctx = RunContext.open(filled.spec_path, filled.dag_id, filled.run_id, settings=filled.settings)
    with ctx.catalog.session() as s:
        approved = {a.id for a in s.scalars(select(Asset).where(Asset.status == AssetStatus.approved))}
    assert approve_id in approved and reject_id not in approved
    publish.run(ctx)
    with ctx.catalog.session() as s:
        published = {p.derivative.asset_id for p in s.scalars(select(Publication))}
    assert published == approved


REVIEW_RUN = "manual__2026-11-21T09:00:00+00:00"


@pytest.fixture(scope="module")
def review_run(filled) -> list[str]:
    """A second run of the same campaign holding 200 ``needs_review`` assets: two gallery
    pages. Its rows are made here (200 drawn images would take minutes on this machine), each
    pointing at one of the first run's real originals; none has a thumbnail yet, so the
    gallery makes each once, as for a run from before thumbnails."""
    from datetime import UTC, datetime, timedelta

    from darkroom.catalog.tables import Run, Variant

    with Catalog(filled.catalog_url).session() as s:
        first = s.scalar(select(Run).where(Run.dag_id == filled.dag_id, Run.run_id == filled.run_id))
        run = Run(campaign_id=first.campaign_id, dag_id=first.dag_id, run_id=REVIEW_RUN,
                  spec_hash=first.spec_hash, conf={}, summary={})
        s.add(run)
        s.flush()
        sources = [s.get(Asset, a) for a in filled.asset_ids[:-1]]
        start = datetime(2026, 11, 21, 9, tzinfo=UTC)
        ids = []
        for i in range(200):
            src = sources[i % len(sources)]
            v = src.variant
            s.add(Variant(id=f"rv{i:04d}", campaign_id=v.campaign_id, product_id=f"{v.product_id}-{i}",
                          asset_type=v.asset_type, channels=v.channels, template_version=v.template_version,
                          prompt=v.prompt, negative_prompt=v.negative_prompt, seed=1000 + i, params=v.params))
            s.add(Asset(id=f"ra{i:04d}", variant_id=f"rv{i:04d}", run_pk=run.id, status=AssetStatus.needs_review,
                        uri=src.uri, sha256=src.sha256, width=src.width, height=src.height, format=src.format,
                        model_name=src.model_name, model_version=src.model_version, scheduler=src.scheduler,
                        steps=src.steps, guidance=src.guidance, seed=1000 + i, backend=src.backend,
                        created_at=start + timedelta(seconds=i)))
            ids.append(f"ra{i:04d}")
    return ids


def test_reviewer_goes_through_two_pages_by_keyboard(server, filled, review_run):
    """200 needs_review assets, 100 a page, filtered to needs_review: the reviewer decides each
    with a or r (every tenth rejected) and the gallery moves on by itself, to the next page
    after the first page's last card. Every asset gets exactly one decision (keyset pages skip
    none although each decision takes its asset out of the filter). Prints decisions per minute
    (docs/benchmarks.md); asserts no speed."""
    import time
    from urllib.parse import quote

    from tests.conftest import unavailable
    from tests.plugins.browser import Chromium
    from tests.plugins.conftest import chromium_binary

    binary = chromium_binary()
    if binary is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    url = f"{server.url}/darkroom/review/{quote(filled.dag_id)}/{quote(REVIEW_RUN, safe='')}?status=needs_review"
    browser = Chromium(binary)

    def settled(expression: str) -> None:
        # A page change destroys the context an expression runs in: try again on the new page.
        deadline = time.monotonic() + 30
        while True:
            try:
                browser.wait_for(expression, timeout=max(0.1, deadline - time.monotonic()))
                return
            except RuntimeError:
                time.sleep(0.05)

    try:
        browser.call("Network.setCookie", name="_token", value=server.tokens["admin"], url=server.url,
                     httpOnly=True, sameSite="Lax")
        browser.goto(url)
        settled("document.querySelectorAll('article.card').length === 100")
        assert "1–100 of 200" in browser.eval("document.querySelector('.pager .range').textContent")
        settled("document.querySelector('article.card img').naturalWidth > 0")  # made on first request
        started = time.monotonic()
        for n in range(200):
            i = n % 100
            browser.key("r" if n % 10 == 9 else "a")
            if i < 99:
                settled(f"document.querySelectorAll('article.card')[{i}].dataset.status !== 'needs_review'")
            elif n < 199:  # the page's last card: the gallery goes on to the next page
                settled("location.search.includes('after=') && document.readyState === 'complete' && "
                        "document.querySelectorAll('article.card').length === 100")
            else:
                settled("document.querySelectorAll('article.card')[99].dataset.status !== 'needs_review'")
        elapsed = time.monotonic() - started
        # The second page, as it loaded: the first page's 100 had left the filter.
        assert browser.eval("document.querySelector('.pager .range').textContent") == "1–100 of 100"
        assert "This is the last page" in browser.eval("document.getElementById('flash').textContent")
    finally:
        browser.close()
    print(f"\nkeyboard review: 200 decisions over 2 pages in {elapsed:.1f} s = "
          f"{200 / elapsed * 60:.0f} decisions per minute")
    with Catalog(filled.catalog_url).session() as s:
        rows = list(s.scalars(select(Review).where(Review.asset_id.in_(review_run))))
        statuses = {a: s.get(Asset, a).status for a in review_run}
    assert sorted(r.asset_id for r in rows) == review_run  # one decision each, none skipped
    assert all(r.reviewer == "admin" for r in rows)
    assert [a for a, st in statuses.items() if st == AssetStatus.rejected] == review_run[9::10]
    assert all(st == AssetStatus.approved for a, st in statuses.items() if a not in review_run[9::10])


def test_compare_where_judgment_happens(server, filled):
    """A new version beside the one it superseded, the brand references beside a brand
    check in doubt (the nearest marked), and the values and thresholds that put an asset in
    the review band."""
    from darkroom.catalog.tables import QAResult

    old, doubted = filled.asset_ids[0], filled.asset_ids[4]
    with Catalog(filled.catalog_url).session() as s:
        src = s.get(Asset, old)
        s.add(Asset(id="newversion0", variant_id=src.variant_id, version=2, supersedes_id=old, run_pk=src.run_pk,
                    status=AssetStatus.needs_review, uri=src.uri, sha256=src.sha256, width=src.width,
                    height=src.height, format=src.format, model_name=src.model_name, model_version="v2",
                    scheduler=src.scheduler, steps=src.steps, guidance=src.guidance, seed=src.seed,
                    backend=src.backend))
        s.add(QAResult(asset_id=doubted, check="brand_palette", value=55.0, threshold=60.0, passed=True,
                       status="borderline", detail="palette distance to studio_2.png 55 <= 60 (within review band 10)"))
    page = server.request("GET", _gallery(filled))[2].decode()
    assert f'data-previous="{old}"' in page and f"/files/thumbnail/{old}" in page
    assert "model <code>" in page and "an earlier model version" in page
    band = page[page.index('<table class="band">'):]
    band = band[:band.index("</table>")]
    assert "<td>brand_palette</td><td>55</td><td>60</td>" in band and "within review band 10" in band
    refs = page[page.index('<div class="refs" data-check="brand_palette">'):]
    assert f"/files/brand-reference/{doubted}/brand_palette/studio_1.png" in refs
    assert '<figure class="nearest">' in refs and "studio_2.png (nearest)" in refs
    code, headers, data = server.request("GET", f"/darkroom/files/brand-reference/{doubted}/brand_palette/studio_2.png")
    assert code == 200 and data[:4] == b"\x89PNG" and headers["content-type"] == "image/png"
    for probe in ("..%2Fbrand%2Frestricted_terms.txt", "nope.png"):
        assert server.request("GET", f"/darkroom/files/brand-reference/{doubted}/brand_palette/{probe}")[0] == 404
    assert server.request("GET", f"/darkroom/files/brand-reference/{doubted}/sharpness/studio_2.png")[0] == 404
    shown = json.loads(server.request("GET", f"/darkroom/api/runs/{filled.dag_id}/{filled.run_id}/assets")[2])
    mine = {r["asset_id"]: r for r in shown["assets"]}
    assert mine["newversion0"]["previous"]["asset_id"] == old
    from darkroom.config import BRAND_DIR

    refs = next(b for b in mine[doubted]["brand_references"] if b["check"] == "brand_palette")
    folder = sorted(p.name for p in (BRAND_DIR / "references").glob("*.png"))
    assert (refs["nearest"], refs["names"][0]) == ("studio_2.png", "studio_2.png")
    assert refs["names"][1:] == [n for n in folder if n != "studio_2.png"][:5]
