"""The approval sensor and its trigger: serialization (ids, never a password), the async event
loop in the triggerer, the deadline as the deferral's timeout, and the spec's policies."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from darkroom.catalog import Catalog  # noqa: E402
from darkroom.catalog import reviews as review  # noqa: E402
from darkroom.catalog.tables import Asset, AssetStatus, Campaign, Run, Variant  # noqa: E402
from darkroom_operators.approval import CampaignApprovalSensor, CampaignApprovalTrigger  # noqa: E402

from tests.support import airflow_env  # noqa: F401  (before any airflow import)

CAMPAIGNS = Path(__file__).resolve().parents[2] / "include" / "campaigns"
DAG_ID, RUN_ID = "campaign__summer_social", "manual__approval"


@pytest.fixture
def waiting_run(catalog_url, monkeypatch):
    """A run with three assets that passed QA and wait for people; the environment names its
    catalog, as the triggerer's and the workers' do."""
    monkeypatch.setenv("DARKROOM_CATALOG_URL", catalog_url)
    catalog = Catalog(catalog_url)
    with catalog.session() as s:
        s.add(Campaign(id="summer_social", spec_hash="x", spec_path="x", spec_body={}))
        run = Run(campaign_id="summer_social", dag_id=DAG_ID, run_id=RUN_ID, spec_hash="x", conf={}, summary={})
        s.add(run)
        s.flush()
        for i in range(3):
            s.add(Variant(id=f"v{i}", campaign_id="summer_social", product_id=f"P{i}", asset_type="t",
                          channels=[], template_version="t", prompt="p", negative_prompt="", seed=i, params={}))
            s.add(Asset(id=f"a{i}", variant_id=f"v{i}", run_pk=run.id, status=AssetStatus.qa_passed,
                        model_name="m", model_version="1", scheduler="ddim", steps=1, guidance=1.0,
                        seed=i, backend="local"))
    return catalog


def _trigger(*, poke: float = 0.05) -> CampaignApprovalTrigger:
    return CampaignApprovalTrigger(catalog_conn_id="darkroom_catalog", dag_id=DAG_ID, run_id=RUN_ID,
                                   poke_interval=poke)


def _first_event(trigger, timeout: float = 30):
    async def first():
        return await asyncio.wait_for(trigger.run().__anext__(), timeout)

    return asyncio.run(first())


def test_serialize_round_trip(waiting_run):
    trigger = _trigger()
    classpath, kwargs = trigger.serialize()
    assert classpath == "darkroom_operators.approval.CampaignApprovalTrigger"
    assert kwargs == {"catalog_conn_id": "darkroom_catalog", "dag_id": DAG_ID, "run_id": RUN_ID,
                      "poke_interval": 0.05}
    from airflow.sdk._shared.module_loading import import_string

    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_fires_when_the_last_decision_arrives(waiting_run):
    def reviewers():
        time.sleep(0.3)  # the trigger has polled a few times with nothing decided
        review.decide(waiting_run, "a0", "approve", "ana")
        review.decide(waiting_run, "a1", "reject", "ben", "logo cut off")
        time.sleep(0.2)
        review.decide(waiting_run, "a2", "approve", "ana")

    started = time.monotonic()
    thread = threading.Thread(target=reviewers)
    thread.start()
    event = _first_event(_trigger())
    thread.join()
    assert event.payload == {"status": "done", "approved": 2, "rejected": 1}
    assert time.monotonic() - started >= 0.5  # it waited for the third decision


def test_logs_a_line_when_the_counts_change_not_on_every_poll(waiting_run, capsys):
    """Reviewers take hours: a line per poll (every few seconds) buried the triggerer's log.
    The trigger logs the counts when they change, else at most once a minute."""
    def reviewers():
        time.sleep(0.4)  # ~20 polls with nothing decided
        review.decide(waiting_run, "a0", "approve", "ana")
        time.sleep(0.4)
        review.decide(waiting_run, "a1", "reject", "ben")
        time.sleep(0.4)
        review.decide(waiting_run, "a2", "approve", "ana")

    thread = threading.Thread(target=reviewers)
    thread.start()
    event = _first_event(_trigger(poke=0.02))
    thread.join()
    assert event.payload["status"] == "done"
    # Airflow's structlog writes the trigger's log to stdout here, as in the triggerer.
    out = capsys.readouterr().out
    lines = [line.split("] ", 1)[1].split(" [", 1)[0] for line in out.splitlines()
             if "wait for a decision" in line]
    assert lines == [f"3 assets of {DAG_ID}/{RUN_ID} wait for a decision (0 approved, 0 rejected)",
                     f"2 assets of {DAG_ID}/{RUN_ID} wait for a decision (1 approved, 0 rejected)",
                     f"1 assets of {DAG_ID}/{RUN_ID} wait for a decision (1 approved, 1 rejected)"]


def test_turns_exceptions_into_an_error_event(tmp_path, monkeypatch):
    monkeypatch.setenv("DARKROOM_CATALOG_URL", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    event = _first_event(_trigger())
    assert event.payload["status"] == "error" and "OperationalError" in event.payload["message"]


def _context(spec: Path):
    return {"dag_run": SimpleNamespace(dag_id=DAG_ID, run_id=RUN_ID), "params": {}}


@pytest.fixture
def sensor(tmp_path, waiting_run, monkeypatch):
    monkeypatch.setenv("DARKROOM_CATALOG_URL", waiting_run.url)
    for f in ("summer_social.yaml", "summer_social.products.csv"):
        shutil.copy(CAMPAIGNS / f, tmp_path / f)
    return CampaignApprovalSensor(task_id="await_approval", spec_path=str(tmp_path / "summer_social.yaml"))


def test_sensor_defers_while_assets_wait(sensor):
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as info:
        sensor.execute(_context(Path(sensor.spec_path)))
    trigger = info.value.trigger
    assert isinstance(trigger, CampaignApprovalTrigger)
    assert info.value.method_name == "execute_complete"
    assert trigger.poke_interval == 2.0  # summer_social: approval.poke_interval 2s
    # The deadline is Airflow's own deferral timeout (approval.timeout 2d): no clock of ours.
    assert info.value.timeout == timedelta(days=2)
    assert set(trigger.serialize()[1]) == {"catalog_conn_id", "dag_id", "run_id", "poke_interval"}


def _past_the_deadline(sensor, spec: Path):
    """What Airflow does when the deferral's timeout passes: the scheduler sets the task to
    resume with next_method __fail__ and a trigger-timeout error, and the worker resumes it."""
    from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason

    return sensor.resume_execution(TRIGGER_FAIL_REPR, {"error": TriggerFailureReason.TRIGGER_TIMEOUT},
                                   _context(spec))


def test_sensor_completes_without_deferring_when_all_decided(sensor, waiting_run):
    for a in ("a0", "a1", "a2"):
        review.decide(waiting_run, a, "approve", "ana")
    assert sensor.execute(_context(Path(sensor.spec_path))) == {"approved": 3, "rejected": 0}


def test_sensor_routes_by_the_spec_before_it_waits(sensor, waiting_run):
    """approval.review automated: the policy decides every asset, so nothing is deferred."""
    spec = Path(sensor.spec_path)
    spec.write_text(spec.read_text().replace("approval:\n", "approval:\n  review: automated\n", 1))
    with waiting_run.session() as s:
        for v in s.query(Variant):
            v.asset_type = "lifestyle"
    assert sensor.execute(_context(spec)) == {"approved": 3, "rejected": 0}
    with waiting_run.session() as s:
        assert {r.reviewer for a in s.query(Asset) for r in a.reviews} == {"policy:automated@1"}


def test_timeout_rejects_undecided_when_the_spec_says_so(sensor, waiting_run):
    # summer_social: approval.on_timeout = reject_undecided
    review.decide(waiting_run, "a0", "approve", "ana")
    assert _past_the_deadline(sensor, Path(sensor.spec_path)) == {"approved": 1, "rejected": 2}
    with waiting_run.session() as s:
        assert {a.id: a.status for a in s.query(Asset)} == {
            "a0": AssetStatus.approved, "a1": AssetStatus.rejected, "a2": AssetStatus.rejected}
        timeout_reviews = [r for a in s.query(Asset) for r in a.reviews if r.reviewer == "darkroom:timeout"]
        assert len(timeout_reviews) == 2


def test_timeout_fails_the_task_by_default(tmp_path, sensor, waiting_run):
    from airflow.sdk.exceptions import AirflowFailException

    spec = Path(sensor.spec_path)
    spec.write_text(spec.read_text().replace("on_timeout: reject_undecided", "on_timeout: fail"))
    review.decide(waiting_run, "a0", "approve", "ana")
    # Failed without a retry: a retry would only start waiting again.
    with pytest.raises(AirflowFailException, match="2 assets had no decision within 2d; set approval.on_timeout"):
        _past_the_deadline(sensor, spec)
    with waiting_run.session() as s:  # nothing was decided for the people
        assert sorted(a.status for a in s.query(Asset)) == [AssetStatus.approved, AssetStatus.qa_passed,
                                                             AssetStatus.qa_passed]


def test_other_resumes_are_airflows(sensor):
    """Only the deferral timeout is ours to handle; another trigger failure stays a failure."""
    from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR
    from airflow.sdk.exceptions import TaskDeferralError

    with pytest.raises(TaskDeferralError):
        sensor.resume_execution(TRIGGER_FAIL_REPR, {"error": "the trigger crashed"},
                                _context(Path(sensor.spec_path)))
    assert sensor.resume_execution("execute_complete", {"event": {"status": "done", "approved": 3}},
                                   _context(Path(sensor.spec_path))) == {"approved": 3, "rejected": 0}


@pytest.mark.postgres
def test_no_serialized_trigger_kwarg_contains_a_password(tmp_path, postgres_url, monkeypatch):
    """The catalog's connection holds a password; the trigger Airflow stores holds its id, and
    the triggerer, building the connection itself, still reaches the catalog."""
    from airflow.sdk.exceptions import TaskDeferred
    from sqlalchemy.engine import make_url

    from tests.support.servers import create_database, drop_database

    password = "s3cret-Pa55w0rd"
    url = make_url(create_database(postgres_url, "approval_conn"))
    try:
        monkeypatch.delenv("DARKROOM_CATALOG_URL", raising=False)
        monkeypatch.setenv("AIRFLOW_CONN_DARKROOM_CATALOG", str(
            url.set(drivername="postgres", password=password).render_as_string(hide_password=False)))
        catalog = Catalog(url.render_as_string(hide_password=False))
        with catalog.session() as s:
            s.add(Campaign(id="summer_social", spec_hash="x", spec_path="x", spec_body={}))
            run = Run(campaign_id="summer_social", dag_id=DAG_ID, run_id=RUN_ID, spec_hash="x", conf={},
                      summary={})
            s.add(run)
            s.flush()
            s.add(Variant(id="v0", campaign_id="summer_social", product_id="P0", asset_type="t",
                          channels=[], template_version="t", prompt="p", negative_prompt="", seed=0, params={}))
            s.add(Asset(id="a0", variant_id="v0", run_pk=run.id, status=AssetStatus.qa_passed,
                        model_name="m", model_version="1", scheduler="ddim", steps=1, guidance=1.0, seed=0,
                        backend="local"))
        for f in ("summer_social.yaml", "summer_social.products.csv"):
            shutil.copy(CAMPAIGNS / f, tmp_path / f)
        sensor = CampaignApprovalSensor(task_id="await_approval", spec_path=str(tmp_path / "summer_social.yaml"))
        with pytest.raises(TaskDeferred) as info:
            sensor.execute(_context(tmp_path / "summer_social.yaml"))
        classpath, kwargs = info.value.trigger.serialize()
        assert kwargs["catalog_conn_id"] == "darkroom_catalog"
        assert password not in json.dumps(kwargs) and all(password not in str(v) for v in kwargs.values())
        # The triggerer's side: the trigger, rebuilt from what Airflow stored, finds the catalog.
        from airflow.sdk._shared.module_loading import import_string

        rebuilt = import_string(classpath)(**kwargs)
        threading.Timer(0.3, reviews_decide, args=(catalog,)).start()
        assert _first_event(rebuilt).payload == {"status": "done", "approved": 1, "rejected": 0}
    finally:
        from darkroom.catalog import db

        engine = db._engines.pop(url.render_as_string(hide_password=False), None)
        if engine is not None:
            engine.dispose()
        drop_database(postgres_url, "approval_conn")


def reviews_decide(catalog) -> None:
    review.decide(catalog, "a0", "approve", "ana")


def test_error_event_fails_the_task(sensor):
    with pytest.raises(RuntimeError, match="approval trigger failed: boom"):
        sensor.execute_complete(_context(Path(sensor.spec_path)), {"status": "error", "message": "boom"})


def test_extra_link_points_at_the_gallery():
    from darkroom_operators.approval import ReviewGalleryLink

    key = SimpleNamespace(dag_id=DAG_ID, run_id="manual__2026-11-20T10:00:00+00:00")
    link = ReviewGalleryLink().get_link(None, ti_key=key)
    assert link == "/darkroom/review/campaign__summer_social/manual__2026-11-20T10%3A00%3A00%2B00%3A00"


# --------------------------------------------------------------------------- approval.notify


class Inbox:
    """aiosmtpd's handler: keeps every message a real SMTP session delivered."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        import email

        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_server(monkeypatch):
    """An SMTP server on loopback and the Airflow connection ``smtp_darkroom`` pointing at it."""
    from aiosmtpd.controller import Controller

    from tests.support.servers import HOST, free_port

    inbox = Inbox()
    controller = Controller(inbox, hostname=HOST, port=free_port())
    controller.start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DARKROOM", json.dumps({
        "conn_type": "smtp", "host": HOST, "port": controller.port,
        "extra": {"disable_tls": True, "disable_ssl": True, "retry_limit": 0, "timeout": 5}}))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    yield inbox
    controller.stop()


def _notify(spec: Path, to: str = "reviewers@example.com") -> None:
    spec.write_text(spec.read_text().replace("approval:\n", (
        "approval:\n  notify:\n    conn_id: smtp_darkroom\n    from_email: darkroom@example.com\n"
        f"    to: [{to}]\n"), 1))


def test_tells_reviewers_how_many_wait_and_where(sensor, waiting_run, smtp_server):
    from airflow.sdk.exceptions import TaskDeferred

    spec = Path(sensor.spec_path)
    _notify(spec)
    review.decide(waiting_run, "a0", "approve", "ana")
    with pytest.raises(TaskDeferred):
        sensor.execute(_context(spec))
    assert len(smtp_server.messages) == 1
    rcpt, msg = smtp_server.messages[0]
    assert rcpt == ["reviewers@example.com"] and msg["From"] == "darkroom@example.com"
    assert msg["Subject"] == "Darkroom: 2 assets of summer_social wait for review"
    html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    link = f"https://airflow.example.com/darkroom/review/{DAG_ID}/{RUN_ID}"
    assert f'<a href="{link}">' in html and "2 assets of campaign <b>summer_social</b>" in html
    assert "the undecided are rejected" in html  # summer_social: on_timeout reject_undecided


def test_no_email_when_nothing_waits(sensor, waiting_run, smtp_server):
    spec = Path(sensor.spec_path)
    _notify(spec)
    for a in ("a0", "a1", "a2"):
        review.decide(waiting_run, a, "approve", "ana")
    assert sensor.execute(_context(spec)) == {"approved": 3, "rejected": 0}
    assert smtp_server.messages == []


def test_a_mail_server_that_is_down_does_not_stop_the_wait(sensor, smtp_server, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    from tests.support.servers import HOST, free_port

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DARKROOM", json.dumps({
        "conn_type": "smtp", "host": HOST, "port": free_port(),  # nothing listens there
        "extra": {"disable_tls": True, "disable_ssl": True, "retry_limit": 0, "timeout": 5}}))
    spec = Path(sensor.spec_path)
    _notify(spec)
    with pytest.raises(TaskDeferred):
        sensor.execute(_context(spec))
    assert smtp_server.messages == []


def test_a_bad_address_is_refused_with_its_field(tmp_path):
    from darkroom.errors import SpecError
    from darkroom.spec import load_spec

    for f in ("summer_social.yaml", "summer_social.products.csv"):
        shutil.copy(CAMPAIGNS / f, tmp_path / f)
    spec = tmp_path / "summer_social.yaml"
    _notify(spec, to="reviewers.example.com")
    with pytest.raises(SpecError, match=r"approval\.notify\.to.*'reviewers.example.com' is not an email"):
        load_spec(spec)
