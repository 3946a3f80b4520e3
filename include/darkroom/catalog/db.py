"""Opening the catalog: one engine per URL per process, schema managed by Alembic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).with_name("migrations")
_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()
# Alembic's migration context is one per process: two threads upgrading at once (the gallery's
# first requests, all arriving together) broke each other's ("No context has been configured").
_migrate_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers (the review CLI, the gallery) work while a task writes; the busy
    # timeout makes concurrent writers from LocalExecutor wait instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def engine_for(url: str) -> Engine:
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 30})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            _engines[url] = engine
        return engine


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the catalog at ``url`` to the newest schema (idempotent, cached per process)."""
    if url in _migrated:
        return
    with _migrate_lock:
        if url in _migrated:  # another thread did it while this one waited
            return
        engine = engine_for(url)
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
        _migrated.add(url)


class Catalog:
    """The asset catalog at one URL."""

    def __init__(self, url: str, *, migrate_schema: bool = True):
        self.url = url
        if migrate_schema:
            migrate(url)
        self.engine = engine_for(url)
        # Tagged, so that a process's hooks can tell the catalog's transactions from others'
        # (a stopped Airflow task commits none: darkroom_operators.stopping).
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info={"darkroom_catalog": True})

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for messages."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy parses: say nothing of it
            return "the configured catalog"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error."""
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise
