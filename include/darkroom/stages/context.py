"""What every stage receives: the spec, the run's identity, the Params and the outside world."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from darkroom.catalog import runs
from darkroom.catalog.db import Catalog
from darkroom.config import Settings
from darkroom.ids import key_part, run_key
from darkroom.params import RunConf
from darkroom.spec import LoadedSpec, load_spec
from darkroom.storage import Storage, open_storage

__all__ = ["RunConf", "RunContext"]

#: Orchestrator states in which a run may still draw, check, review or publish.
ACTIVE_STATES = ("queued", "running", "restarting", "up_for_retry", "deferred")


@dataclass
class RunContext:
    """Everything a stage needs: the spec, the run's identity and the outside world."""

    loaded: LoadedSpec
    dag_id: str
    run_id: str
    conf: RunConf
    settings: Settings
    catalog: Catalog
    storage: Storage
    s3_client_factory: object = None  # callable(aws_conn_id, endpoint_url) -> boto3 client
    sql_url_factory: object = None  # callable(conn_id) -> SQLAlchemy URL (postgres:// products)
    #: The host this stage runs on, as the orchestrator names it (Airflow's task instance
    #: hostname); recorded with what the GPU stages measure on it.
    worker: str = field(default_factory=socket.gethostname)
    #: The orchestrator's state of a DAG run ("running", "success", "failed"...), or None
    #: when it cannot tell: the Airflow adapters ask Airflow. Decides whether another run
    #: that claimed an asset still works on it (see catalog.assets.claim).
    run_state: Callable[[str, str], str | None] | None = None
    _run_pk: int | None = field(default=None, repr=False)
    _attempt: int = field(default=0, repr=False)
    _models: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, spec_path: str | Path, dag_id: str, run_id: str, conf: dict | None = None,
             settings: Settings | None = None, s3_client=None, s3_client_factory=None,
             sql_url_factory=None, worker: str | None = None,
             run_state: Callable[[str, str], str | None] | None = None) -> RunContext:
        settings = settings or Settings.from_env()
        return cls(
            loaded=load_spec(spec_path),
            dag_id=dag_id,
            run_id=run_id,
            conf=RunConf.from_dict(conf),
            settings=settings,
            catalog=Catalog(settings.catalog_url),
            storage=open_storage(settings.storage_url, s3_client=s3_client,
                                 endpoint_url=settings.s3_endpoint_url),
            s3_client_factory=s3_client_factory,
            sql_url_factory=sql_url_factory,
            worker=worker or socket.gethostname(),
            run_state=run_state,
        )

    @property
    def spec(self):
        return self.loaded.spec

    @property
    def run_key(self) -> str:
        """The run attempt's storage key segment (``-attempt-N`` after a re-process)."""
        _ = self.run_pk
        return run_key(self.run_id, self._attempt)

    @property
    def run_pk(self) -> int:
        """The run's row in the catalog (its newest attempt), registered (with its campaign)
        on first use."""
        if self._run_pk is None:
            self._use(runs.register(self.catalog, self.loaded, self.dag_id, self.run_id,
                                    self.conf.as_conf()))
        return self._run_pk

    def start(self, model_identity: str | None) -> int:
        """Register the run as its first task does: a DAG run re-processed with other Params
        or another model starts a new attempt (catalog.runs.register)."""
        self._use(runs.register(self.catalog, self.loaded, self.dag_id, self.run_id,
                                self.conf.as_conf(), start=True, model_identity=model_identity))
        return self._run_pk

    def _use(self, run_pk: int) -> None:
        self._run_pk = run_pk
        self._attempt = runs.get(self.catalog, run_pk).attempt

    def model(self, asset_type: str, *, pinned: bool = True):
        """``(ModelRef, generation)``: the model this run draws an asset type's variants with,
        resolved once per task. For the campaign's ``generation.model``: the ``model_version``
        Param, else (``pinned``) the version the run recorded (an alias resolves once per run:
        validate_inputs, which passes ``pinned=False``, records it), else the spec's model. An
        asset type with a model of its own: the version the run recorded for it (``pinned``),
        else its model. :raises ModelError: it cannot be resolved."""
        if asset_type not in self._models:
            from darkroom.generation import resolve  # profiles import MLflow: only when asked

            if self.spec.asset_type(asset_type).own_model:
                recorded = runs.get(self.catalog, self.run_pk).summary.get("models", {})
                requested = (recorded.get(asset_type) or {}).get("version") if pinned else None
            else:
                requested = self.conf.model_version
                if requested is None and pinned:
                    requested = runs.get(self.catalog, self.run_pk).model_version
            self._models[asset_type] = resolve.for_asset_type(self.loaded, asset_type, self.settings,
                                                              requested)
        return self._models[asset_type]

    def models(self, *, pinned: bool = True) -> dict:
        """Asset type -> ``(ModelRef, generation)``, for every asset type of the campaign."""
        return {at.name: self.model(at.name, pinned=pinned) for at in self.spec.asset_types}

    def alive(self, run_pk: int) -> bool:
        """Whether the run ``run_pk`` may still work on what it claimed: not superseded by a
        later attempt, and running as the orchestrator tells (without an orchestrator's word,
        as the catalog tells: not yet publishing or published)."""
        if run_pk == self._run_pk:
            return True
        if runs.superseded(self.catalog, run_pk):
            return False
        other = runs.get(self.catalog, run_pk)
        state = self.run_state(other.dag_id, other.run_id) if self.run_state else None
        if state is not None:
            return str(state).lower() in ACTIVE_STATES
        return other.state == "running"

    def key(self, *parts: str) -> str:
        """The storage key ``{campaign}/{run}/{parts...}``, every part one safe segment."""
        return "/".join([self.spec.id, self.run_key, *map(key_part, parts)])

    @property
    def s3(self):
        """The storage's S3 client when storage is S3 (reads of s3:// URIs reuse it), else None."""
        return getattr(self.storage, "client", None)

    def s3_client(self):
        """The client for s3:// product files and reference images (storage's endpoint)."""
        if self.s3_client_factory:
            return self.s3_client_factory("aws_default", self.settings.s3_endpoint_url)
        if self.s3 is not None:
            return self.s3
        import boto3  # ~0.5 s to import: file-storage runs never need it

        return boto3.client("s3", endpoint_url=self.settings.s3_endpoint_url)

    def products_frame(self):
        """The campaign's product rows as a DataFrame, read from its source."""
        from darkroom import products  # pandas: ~1.5 s to import, only tasks that read products pay

        s3 = self.s3_client() if self.loaded.product_source.startswith("s3://") else None
        url_for = self.sql_url_factory or (lambda conn_id: products.sql_url(conn_id, self.settings))
        return products.load_products_frame(self.loaded, s3_client=s3, sql_url_factory=url_for)
