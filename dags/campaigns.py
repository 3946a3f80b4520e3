"""
### Campaign DAGs

One DAG per campaign spec in `include/campaigns/`: `campaign__<id>`. Each run validates the
product data, expands prompt variants, then sends each batch of variants through a mapped
task group (generate on the GPU queue, QA, any QA regeneration rounds and the model upscaler
on the GPU queue, derivatives), tracks the run in MLflow, waits for reviewers, and publishes
what they approved. Batches stream: batch k's QA and derivatives run while batch k+1 is
generated, and reviewers can decide on the first batches while later ones are drawn.

Up to the spec's ``max_active_runs`` runs at once, runs waiting for reviewers included: a
scheduled refresh plans and draws while an earlier run waits for review, and queues its own
review (the catalog's claims keep two runs from drawing the same variant). A user error (a
model version that does not exist, Params the run does not take, product data that fails
its expectations) fails its task at once, without retries.

Parsing stays cheap: only YAML, pydantic and small JSON notes run here. Models, the catalog,
Great Expectations and MLflow are touched inside tasks.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Asset, Param, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException
from darkroom.config import Settings
from darkroom.errors import RunFailed, SpecError
from darkroom.generation.models import profile_choices
from darkroom.generation.routing import pool_for
from darkroom.params import PARAMS
from darkroom.spec import LoadedSpec, load_spec, spec_files
from darkroom_operators.approval import CampaignApprovalSensor
from darkroom_operators.failures import no_retry_for_user_errors
from darkroom_operators.generate import GenerateImagesOperator
from darkroom_operators.hooks import DarkroomHook

SETTINGS = Settings.from_env()
CAMPAIGNS_DIR = SETTINGS.campaigns_dir

DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    # A batch's later stages before the next batch's first: on the GPU pool a QA regeneration
    # or the upscaler of batch k goes before batch k+1's generate, so what reviewers can see
    # comes first.
    "weight_rule": "upstream",
}


def _ctx(spec_path: str):
    return DarkroomHook().run_context(spec_path, get_current_context())


def published_asset(campaign_id: str) -> Asset:
    """The Airflow Asset a campaign's publish task updates; downstream DAGs schedule on it."""
    return Asset(name=f"darkroom_{campaign_id}_published", uri=f"darkroom://campaigns/{campaign_id}/published")


def trigger_params(loaded: LoadedSpec) -> dict[str, Param]:
    """The trigger form's Params: each with its title, description and default; model_version
    suggests the profile versions and aliases the campaign can use, as darkroom last noted them
    (``models list``, ``register``, ``promote``): the registry itself is read by the task."""
    schemas = {name: dict(schema) for name, schema in PARAMS.items()}
    model = loaded.spec.generation.model
    versions, aliases = profile_choices(SETTINGS, model)
    mv = schemas["model_version"]
    if versions or aliases:
        mv["examples"] = [*aliases, *reversed(versions)]
        known = [f"{a} = version {v}" for a, v in aliases.items()]
        if versions:
            known.append(f"versions {', '.join(versions)}")
        mv["description"] += f" This campaign's profile has: {'; '.join(known)}."
    mv["description"] += f" The spec's model: {model}."
    own = [f"{at.name}: {loaded.spec.generation_for(at.name).model}" for at in loaded.spec.asset_types
           if at.own_model]
    if own:
        mv["description"] += f" Asset types with a model of their own keep it ({'; '.join(own)})."
    return {name: Param(schema.pop("default"), **schema) for name, schema in schemas.items()}


def build_dag(loaded: LoadedSpec) -> DAG:
    spec, path = loaded.spec, str(loaded.path)
    with DAG(
        dag_id=spec.dag_id,
        description=spec.brief.strip().splitlines()[0][:200],
        doc_md=f"### {spec.id}\n\n{spec.brief}\n\nSpec: `{path}`  \nOwner: {spec.owner}",
        schedule=spec.schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        # Approval waits count as running in Airflow (a deferred sensor keeps its run running):
        # more than one, so a refresh is not held back by reviewers.
        max_active_runs=spec.max_active_runs,
        default_args={**DEFAULT_ARGS, "owner": spec.owner},
        tags=["darkroom", f"campaign:{spec.id}", *spec.tags],
        params=trigger_params(loaded),
    ) as dag:

        # Each task body is one call into a stage; the stages import the catalog and the
        # engines, which the DAG processor never needs: imported when the task runs.
        @task
        @no_retry_for_user_errors
        def validate_inputs() -> dict:
            from darkroom.stages import validate

            return validate.run(_ctx(path))

        @task
        @no_retry_for_user_errors
        def expand_prompts() -> list[int]:
            from darkroom.stages import plan

            return plan.run(_ctx(path))

        @task
        @no_retry_for_user_errors
        def qa(batch: int, regeneration: int = 0) -> int:
            from darkroom.stages import qa as stage

            stage.run(_ctx(path), batch, regeneration)
            return batch

        @task
        @no_retry_for_user_errors
        def upscale(batch: int) -> int:
            from darkroom.stages import upscale as stage

            stage.run(_ctx(path), batch)
            return batch

        @task
        @no_retry_for_user_errors
        def postprocess(batch: int) -> int:
            from darkroom.stages import postprocess as stage

            stage.run(_ctx(path), batch)
            return batch

        @task
        @no_retry_for_user_errors
        def track(batches: list[int]) -> dict:
            from darkroom.stages import track as stage

            try:
                return stage.run(_ctx(path))
            except RunFailed as exc:  # every asset failed: a retry would find them failed again
                raise AirflowFailException(str(exc)) from exc

        @task(outlets=[published_asset(spec.id)])
        @no_retry_for_user_errors
        def publish(approvals: dict) -> dict:
            from darkroom.stages import publish as stage

            return stage.run(_ctx(path), approvals)

        # The GPU stages (generate, each QA regeneration round, the model upscaler) go to the
        # GPU queue and pool (from the spec or the deployment; the pool may come from a routing
        # rule, e.g. {when: {priority: high}, pool: gpu_high}); QA, derivatives, tracking and
        # publishing stay on the default queue.
        routing = SETTINGS.gpu_routing(spec.generation.queue, pool_for(spec))

        # One mapped group instance per batch, its tasks mapped with it (same task ids: the
        # group adds no prefix): each batch moves on as soon as its own previous stage ends.
        @task_group(group_id="batch", prefix_group_id=False)
        def each_batch(batch: int):
            generated = GenerateImagesOperator(task_id="generate", spec_path=path, batch=batch, **routing)
            checked = qa(generated.output)
            for n in range(1, spec.qa.max_regenerations + 1):
                redrawn = GenerateImagesOperator(task_id=f"regenerate_{n}", spec_path=path, batch=checked,
                                                 **routing)
                checked = qa.override(task_id=f"qa_{n}")(redrawn.output, regeneration=n)
            if spec.uses_model_upscaler:
                checked = upscale.override(**routing)(checked)
            return postprocess(checked)

        batches = expand_prompts()
        validate_inputs() >> batches
        tracked = track(each_batch.expand(batch=batches))
        approvals = CampaignApprovalSensor(task_id="await_approval", spec_path=path)
        tracked >> approvals
        publish(approvals.output)
    return dag


class InvalidCampaignSpecs(DAG):
    """Carries the errors of specs that do not validate.

    Airflow records an import error for a file only when the whole module raises, which
    would hide every good campaign behind one bad spec. The DagBag also records one when a
    DAG's ``validate()`` raises, while still loading the file's other DAGs: this DAG is never
    loaded, it only reports every broken spec, by file, field, value and fix.
    """

    spec_errors: list[SpecError] = []

    def validate(self):
        raise InvalidCampaignSpec(
            f"{len(self.spec_errors)} campaign spec(s) in {CAMPAIGNS_DIR} did not load; the "
            "other campaigns did.\n\n" + "\n\n".join(str(e) for e in self.spec_errors)
        )


class InvalidCampaignSpec(Exception):
    """Reported by the DagBag as this file's import error."""


def build_all() -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    errors: list[SpecError] = []
    for spec_path in spec_files(CAMPAIGNS_DIR):
        try:
            loaded = load_spec(spec_path)
        except SpecError as exc:
            errors.append(exc)
            continue
        if loaded.spec.dag_id in dags:
            errors.append(SpecError(str(spec_path), [
                f"field `id` = {loaded.spec.id!r}: another spec already uses this id; "
                "fix: give each campaign its own id"]))
            continue
        dags[loaded.spec.dag_id] = build_dag(loaded)
    if errors:
        broken = InvalidCampaignSpecs(dag_id="darkroom_invalid_campaign_specs", schedule=None)
        broken.spec_errors = errors
        dags[broken.dag_id] = broken
    return dags


globals().update(build_all())
