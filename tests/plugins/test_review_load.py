"""20 reviewers deciding 2,000 assets of one run at once through the REST API, on PostgreSQL:
no decision lost, none recorded twice, and each asset ends in its newest decision (issue 16,
item 5; the 10,000-asset figures come from ``make bench-review``)."""

from __future__ import annotations

import pytest

from tests.plugins import review_load
from tests.plugins.conftest import api_server
from tests.support.servers import create_database, drop_database

pytestmark = pytest.mark.postgres

REVIEWERS, ASSETS = 20, 2_000


@pytest.fixture
def loaded(postgres_url, tmp_path):
    url = create_database(postgres_url, "review_load_test")
    try:
        yield url, review_load.seed_run(url, tmp_path / "files", ASSETS)
    finally:
        from tests.conftest import _forget_engine

        _forget_engine(url)
        drop_database(postgres_url, "review_load_test")


def test_concurrent_reviewers_lose_and_duplicate_nothing(loaded, tmp_path):
    url, ids = loaded
    names = tuple(f"reviewer{i:02d}" for i in range(REVIEWERS))
    # 10% of the assets get a second, opposite decision from another reviewer at the same time.
    queues = review_load.plan_decisions(ids, REVIEWERS, contested=0.1)
    sent = sum(len(q) for q in queues)
    assert sent > ASSETS + 100  # the contested ones are really there
    env = {"DARKROOM_HOME": str(tmp_path / "home"), "DARKROOM_CATALOG_URL": url}
    with api_server(tmp_path / "airflow", env, reviewers=names) as srv:
        result = review_load.run_reviewers(srv.url, {n: srv.tokens[n] for n in names}, queues,
                                           deadline_s=400)
    state = review_load.check_final_state(url, result)
    assert len(result.sent) == sent, "the deadline passed before every decision was sent"
    assert state["refused"] == []
    assert state["answered"] == state["review_rows"] == sent
    assert state["assets_decided"] == ASSETS
    assert (state["lost"], state["duplicated"], state["invented"], state["wrong_status"]) == ([], [], [], [])
