"""Waiting for people: a deferrable sensor that holds no worker slot while reviewers work.

The sensor pokes the catalog once; if decisions are missing it defers to
:class:`CampaignApprovalTrigger`, which polls the catalog from the triggerer and fires when
every reviewable asset of the run has a decision, or when the spec's deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink, BaseSensorOperator, Context
from airflow.triggers.base import BaseTrigger, TriggerEvent
from darkroom.spec import Approval
from darkroom_operators.hooks import CATALOG_CONN_ID, DarkroomHook


class CampaignApprovalTrigger(BaseTrigger):
    """Fires when no asset of the run waits for a decision, or at the deadline.

    :param catalog_url: the catalog's SQLAlchemy URL.
    :param dag_id: the campaign DAG's id.
    :param run_id: the DAG run's id.
    :param poke_interval: seconds between catalog polls.
    :param deadline: epoch seconds after which the trigger reports a timeout.
    """

    def __init__(self, catalog_url: str, dag_id: str, run_id: str, poke_interval: float,
                 deadline: float):
        super().__init__()
        self.catalog_url = catalog_url
        self.dag_id = dag_id
        self.run_id = run_id
        self.poke_interval = poke_interval
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "darkroom_operators.approval.CampaignApprovalTrigger",
            {"catalog_url": self.catalog_url, "dag_id": self.dag_id, "run_id": self.run_id,
             "poke_interval": self.poke_interval, "deadline": self.deadline},
        )

    def _state(self):
        from darkroom.catalog import Catalog, runs  # SQLAlchemy: not when the triggerer loads us

        return runs.approval_state(Catalog(self.catalog_url), self.dag_id, self.run_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            while True:
                # The catalog client is synchronous: keep it off the triggerer's event loop.
                state = await asyncio.to_thread(self._state)
                if state.done:
                    yield TriggerEvent({"status": "done", "approved": state.approved,
                                        "rejected": state.rejected})
                    return
                if time.time() >= self.deadline:
                    yield TriggerEvent({"status": "timeout", "waiting": state.waiting,
                                        "approved": state.approved, "rejected": state.rejected})
                    return
                self.log.info("%d assets of %s/%s wait for a decision", state.waiting,
                              self.dag_id, self.run_id)
                await asyncio.sleep(self.poke_interval)
        except Exception as exc:
            yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})


class ReviewGalleryLink(BaseOperatorLink):
    """Extra link from the approval task to its run's review gallery."""

    name = "Review gallery"

    def get_link(self, operator, *, ti_key) -> str:
        return f"/darkroom/review/{quote(ti_key.dag_id)}/{quote(ti_key.run_id, safe='')}"


class CampaignApprovalSensor(BaseSensorOperator):
    """Wait until every QA-passed asset of the run has a human decision.

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
        if not policy.required:
            n = approve.when_not_required(ctx)
            self.log.info("Approval not required by the spec: recorded %d approvals", n)
        state = runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id)
        if state.done:
            return {"approved": state.approved, "rejected": state.rejected}
        self.log.info("%d assets wait for review; deferring (no worker slot is held)", state.waiting)
        self.defer(
            trigger=CampaignApprovalTrigger(
                catalog_url=ctx.settings.catalog_url, dag_id=ctx.dag_id, run_id=ctx.run_id,
                poke_interval=float(Approval.seconds(policy.poke_interval)),
                deadline=time.time() + Approval.seconds(policy.timeout),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict:
        from darkroom.stages import approve  # the catalog: not at DAG parse time

        status = event.get("status")
        if status == "error":
            raise RuntimeError(f"approval trigger failed: {event.get('message')}")
        if status == "timeout":
            approve.at_deadline(self._ctx(context), event.get("waiting"))
        self.log.info("Approval complete: %s", event)
        return {"approved": event.get("approved", 0), "rejected": event.get("rejected", 0)}
