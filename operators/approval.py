"""Waiting for people: a deferrable sensor that holds no worker slot while reviewers work.

The sensor pokes the catalog once; if decisions are missing it defers to
:class:`CampaignApprovalTrigger`, which polls the catalog from the triggerer and fires when
every reviewable asset of the run has a decision. The spec's ``approval.timeout`` is the
deferral's own timeout (``defer(timeout=...)``): when it passes, Airflow's scheduler hands the
task back, and the sensor applies ``approval.on_timeout`` (reject the undecided and publish
what was approved, or fail).

When assets start to wait, the spec's ``approval.notify`` (if set) emails the reviewers, with
Airflow's SMTP notifier through an Airflow connection, how many assets wait and the gallery's
link. Airflow's Required Actions page (HITL) does not list the wait: see
:class:`CampaignApprovalSensor`.

The trigger carries ids, not secrets, as Airflow's S3 triggers do: the catalog's connection
id, the DAG run's ids, the poll interval. The triggerer builds the catalog's URL (with its
password) from the connection itself; nothing secret lands in Airflow's trigger table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink, BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, TaskDeferralTimeout
from airflow.triggers.base import BaseTrigger, TriggerEvent
from darkroom.spec import Approval, ApprovalNotify
from darkroom_operators.hooks import CATALOG_CONN_ID, DarkroomHook

#: The trigger's "still waiting" line, when nothing changed: at most once per this many seconds.
LOG_EVERY_S = 60.0


class CampaignApprovalTrigger(BaseTrigger):
    """Fires when no asset of the run waits for a decision.

    :param catalog_conn_id: the Airflow connection of the catalog (its URL is built here, in
        the triggerer; a ``DARKROOM_CATALOG_URL`` in the triggerer's environment wins).
    :param dag_id: the campaign DAG's id.
    :param run_id: the DAG run's id.
    :param poke_interval: seconds between catalog polls.
    """

    def __init__(self, catalog_conn_id: str, dag_id: str, run_id: str, poke_interval: float):
        super().__init__()
        self.catalog_conn_id = catalog_conn_id
        self.dag_id = dag_id
        self.run_id = run_id
        self.poke_interval = poke_interval
        self._catalog = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "darkroom_operators.approval.CampaignApprovalTrigger",
            {"catalog_conn_id": self.catalog_conn_id, "dag_id": self.dag_id, "run_id": self.run_id,
             "poke_interval": self.poke_interval},
        )

    def _state(self):
        from darkroom.catalog import Catalog, runs  # SQLAlchemy: not when the triggerer loads us

        if self._catalog is None:  # the connection, and its password, read once, here
            self._catalog = Catalog(DarkroomHook(self.catalog_conn_id).settings().catalog_url)
        return runs.approval_state(self._catalog, self.dag_id, self.run_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last, logged_at = None, float("-inf")
        try:
            while True:
                # The catalog client (and the connection lookup) is synchronous: keep it off
                # the triggerer's event loop.
                state = await asyncio.to_thread(self._state)
                if state.done:
                    yield TriggerEvent({"status": "done", "approved": state.approved,
                                        "rejected": state.rejected})
                    return
                # A line when the counts change, else at most one a minute: reviewers take
                # hours, and a line per poll buries everything else in the triggerer's log.
                counts = (state.waiting, state.approved, state.rejected)
                now = time.monotonic()
                if counts != last or now - logged_at >= LOG_EVERY_S:
                    self.log.info("%d assets of %s/%s wait for a decision (%d approved, %d rejected)",
                                  state.waiting, self.dag_id, self.run_id, state.approved,
                                  state.rejected)
                    last, logged_at = counts, now
                await asyncio.sleep(self.poke_interval)
        except Exception as exc:
            yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})


def gallery_path(dag_id: str, run_id: str) -> str:
    """The review gallery of one run, under the API server's root."""
    return f"/darkroom/review/{quote(dag_id)}/{quote(run_id, safe='')}"


class ReviewGalleryLink(BaseOperatorLink):
    """Extra link from the approval task to its run's review gallery."""

    name = "Review gallery"

    def get_link(self, operator, *, ti_key) -> str:
        return gallery_path(ti_key.dag_id, ti_key.run_id)


#: The email's text. The values come in as the context's ``review`` (Jinja renders the
#: template, never the values themselves: a run id cannot inject a template).
NOTIFY_SUBJECT = "Darkroom: {{ review.waiting }} assets of {{ review.campaign }} wait for review"
NOTIFY_HTML = (
    "<p>{{ review.waiting }} assets of campaign <b>{{ review.campaign }}</b> (run "
    "{{ review.run_id | e }}) wait for a decision.</p>"
    '<p><a href="{{ review.link | e }}">Open the review gallery</a>: {{ review.link | e }}</p>'
    "<p>The run publishes what is approved once every asset has a decision, or at "
    "{{ review.deadline }} ({{ review.on_timeout }}).</p>")


def gallery_url(dag_id: str, run_id: str) -> str:
    """The gallery's absolute URL for an email: Airflow's ``[api] base_url``, else the
    API server's default address (set ``base_url`` where reviewers reach Airflow elsewhere)."""
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback=None) or "http://localhost:8080"
    return base.rstrip("/") + gallery_path(dag_id, run_id)


def tell_reviewers(notify: ApprovalNotify, context: Context, review: dict[str, Any]) -> None:
    """Email ``notify.to`` through Airflow's SMTP notifier (the standard notifier interface).

    A failure to send is logged, not raised: the wait goes on (a retry of the task would only
    wait again), and the task's "Review gallery" link still leads to the gallery."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(to=notify.to, from_email=notify.from_email, smtp_conn_id=notify.conn_id,
                            subject=NOTIFY_SUBJECT, html_content=NOTIFY_HTML)
    try:
        notifier({**context, "review": review})
    except Exception as exc:  # the notifier logged it too; say what it means for the run
        notifier.log.warning("Reviewers were not emailed (connection %s): %s: %s; the run waits "
                             "anyway", notify.conn_id, type(exc).__name__, exc)


class CampaignApprovalSensor(BaseSensorOperator):
    """Route the run's assets by the spec's ``approval.review`` (the policies decide what
    they may), then wait until every asset left for people has a decision. When assets start
    to wait, ``approval.notify`` (if set) emails the reviewers the count and the gallery's link.

    Why the wait is not an entry of Airflow's Required Actions page (HITL): an entry there is
    one question to one person, answered once with one of fixed options, and Airflow 3.3 resumes
    the waiting task with that answer (a deferred one too). This wait ends when every asset has
    its own decision (thousands, with a quorum and an audit), which one answer cannot express; an
    entry would either wake the sensor with a choice that decides nothing, or, once answered,
    leave the page while assets still wait. The gallery is the task's "Review gallery" link.

    :param spec_path: path of the campaign spec file (its ``approval`` section sets the
        timeout, the poll interval and what happens on timeout). (templated)
    :param catalog_conn_id: Airflow connection of the catalog, if not the environment's.
    """

    template_fields: Sequence[str] = ("spec_path",)
    operator_extra_links = (ReviewGalleryLink(),)
    ui_color = "#f5a524"

    def __init__(self, *, spec_path: str, catalog_conn_id: str = CATALOG_CONN_ID, **kwargs):
        super().__init__(**kwargs)
        self.spec_path = spec_path
        self.catalog_conn_id = catalog_conn_id

    def _ctx(self, context: Context):
        return DarkroomHook(self.catalog_conn_id).run_context(self.spec_path, context)

    def poke(self, context: Context) -> bool:
        from darkroom.catalog import runs  # the catalog: not at DAG parse time

        ctx = self._ctx(context)
        state = runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id)
        self.log.info("Approval: %d waiting, %d approved, %d rejected", state.waiting,
                      state.approved, state.rejected)
        return state.done

    def execute(self, context: Context) -> dict:
        from darkroom.catalog import runs  # the catalog: not at DAG parse time
        from darkroom.stages import approve

        ctx = self._ctx(context)
        policy = ctx.spec.approval
        routed = approve.route(ctx)  # approval.review: what the policies decide, what waits
        self.log.info("Review routing: %d approved and %d rejected by the policies, %d in the "
                      "audit sample", routed["approved"], routed["rejected"], routed["audit"])
        state = runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id)
        if state.done:
            return {"approved": state.approved, "rejected": state.rejected}
        self.log.info("%d assets wait for review; deferring (no worker slot is held) for at most %s",
                      state.waiting, policy.timeout)
        wait = timedelta(seconds=Approval.seconds(policy.timeout))
        if policy.notify:
            deadline = datetime.now(UTC) + wait
            tell_reviewers(policy.notify, context, {
                "waiting": state.waiting, "campaign": ctx.spec.id, "run_id": ctx.run_id,
                "link": gallery_url(ctx.dag_id, ctx.run_id),
                "deadline": f"{deadline:%Y-%m-%d %H:%M} UTC",
                "on_timeout": ("the undecided are rejected" if policy.on_timeout == "reject_undecided"
                               else "the run fails")})
        self.defer(
            trigger=CampaignApprovalTrigger(
                catalog_conn_id=self.catalog_conn_id, dag_id=ctx.dag_id, run_id=ctx.run_id,
                poke_interval=float(Approval.seconds(policy.poke_interval)),
            ),
            method_name="execute_complete",
            timeout=wait,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict:
        status = event.get("status")
        if status == "error":
            raise RuntimeError(f"approval trigger failed: {event.get('message')}")
        self.log.info("Approval complete: %s", event)
        return {"approved": event.get("approved", 0), "rejected": event.get("rejected", 0)}

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context):
        """Airflow resumes the task here; past the deferral's timeout it raises (as a sensor
        timeout), and the spec's ``approval.on_timeout`` decides instead of failing outright."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout as exc:
            if not isinstance(exc.__cause__, TaskDeferralTimeout):
                raise
            return self.at_deadline(context)

    def at_deadline(self, context: Context) -> dict:
        """``reject_undecided``: reject what is left and let the run publish what was
        approved; ``fail``: fail with how many assets had no decision and the fix."""
        from darkroom.stages import approve  # the catalog: not at DAG parse time

        ctx = self._ctx(context)
        try:
            counts = approve.at_deadline(ctx)
        except TimeoutError as exc:  # on_timeout: fail. A retry would only wait again.
            raise AirflowFailException(str(exc)) from exc
        self.log.warning("Approval deadline (%s) passed: rejected the undecided; %s",
                         ctx.spec.approval.timeout, counts)
        return counts
