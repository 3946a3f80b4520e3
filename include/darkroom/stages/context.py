"""What every stage receives: the spec, the run's identity, the Params and the outside world."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from darkroom.catalog import runs
from darkroom.catalog.db import Catalog
from darkroom.config import Settings
from darkroom.ids import key_part
from darkroom.spec import LoadedSpec, load_spec
from darkroom.storage import Storage, open_storage


@dataclass
class RunConf:
    """The Params a person sets when triggering a run (Airflow UI, CLI --conf)."""

    model_version: str | None = None
    limit: int | None = None
    seed_offset: int = 0
    dry_run: bool = False
    # Only these variant ids (darkroom regenerate --where ...); None: every variant.
    variants: list[str] | None = None

    @classmethod
    def from_dict(cls, conf: dict | None) -> RunConf:
        conf = dict(conf or {})
        limit = conf.get("limit")
        return cls(
            model_version=conf.get("model_version") or None,
            limit=int(limit) if limit not in (None, "", 0) else None,
            seed_offset=int(conf.get("seed_offset") or 0),
            dry_run=bool(conf.get("dry_run", False)),
            variants=list(conf["variants"]) if conf.get("variants") else None,
        )


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
    _run_pk: int | None = field(default=None, repr=False)

    @classmethod
    def open(cls, spec_path: str | Path, dag_id: str, run_id: str, conf: dict | None = None,
             settings: Settings | None = None, s3_client=None, s3_client_factory=None,
             sql_url_factory=None, worker: str | None = None) -> RunContext:
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
        )

    @property
    def spec(self):
        return self.loaded.spec

    @property
    def run_key(self) -> str:
        return key_part(self.run_id)

    @property
    def run_pk(self) -> int:
        """The run's row in the catalog, registered (with its campaign) on first use."""
        if self._run_pk is None:
            self._run_pk = runs.register(self.catalog, self.loaded, self.dag_id, self.run_id,
                                         self.conf.__dict__)
        return self._run_pk

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
