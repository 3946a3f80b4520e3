"""The catalog: the source of truth for every campaign, run, variant, asset, check, decision
and publication.

- :mod:`~darkroom.catalog.db` opens it (one engine per URL, Alembic migrations on open);
- :mod:`~darkroom.catalog.tables` holds the SQLAlchemy tables, ``migrations/`` their history;
- one module per aggregate owns its queries: :mod:`~darkroom.catalog.runs` (runs, plans,
  status counts, approval state), :mod:`~darkroom.catalog.assets` (assets, QA results,
  derivatives, publications, device use), :mod:`~darkroom.catalog.reviews` (decisions) and
  :mod:`~darkroom.catalog.lineage` (search and comparison).

No SQL is written outside this package (product sources aside: they are the user's database).
"""

from darkroom.catalog.db import Catalog

__all__ = ["Catalog"]
