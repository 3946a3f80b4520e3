"""The gallery's REST endpoint for ``darkroom verify``, served by ``airflow api-server`` with
Airflow's own authentication, like the plugin's other read routes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from darkroom.catalog import Catalog
from darkroom.catalog.tables import Derivative
from darkroom.storage import read_uri
from PIL import Image
from sqlalchemy import select

from tests.plugins.conftest import ApiServer, Filled, api_server, fill_catalog


@pytest.fixture(scope="module")
def filled(tmp_path_factory, tiny_model) -> Filled:
    return fill_catalog(tmp_path_factory.mktemp("verify") / "darkroom", tiny_model, limit=2, failed_qa=False)


@pytest.fixture(scope="module")
def server(filled, tmp_path_factory) -> Iterator[ApiServer]:
    env = {"DARKROOM_HOME": str(filled.home), "DARKROOM_CATALOG_URL": filled.catalog_url}
    with api_server(tmp_path_factory.mktemp("airflow"), env) as srv:
        yield srv


def test_verify_endpoint_needs_a_user_and_traces_an_upload(server, filled):
    with Catalog(filled.catalog_url).session() as s:
        d = s.scalars(select(Derivative).where(Derivative.channel == "marketplace")).first()
        uri, asset_id = d.uri, d.asset_id
    data = read_uri(uri)
    headers = {"Content-Type": "image/jpeg", "X-Filename": "found.jpg"}
    assert server.request("POST", "/darkroom/api/verify", user=None, raw=data, headers=headers)[0] == 401
    code, _, body = server.request("POST", "/darkroom/api/verify", user="viewer", raw=data, headers=headers)
    assert code == 200, body
    v = json.loads(body)
    assert v["file"] == "found.jpg" and v["match"]["asset_id"] == asset_id and v["match"]["how"] == "sha256"
    assert v["answers"]["origin"]["request"]["dag_id"] == filled.dag_id
    assert v["answers"]["regenerate"]["exact"] == f"darkroom assets regenerate {asset_id}"
    assert any("unsigned" in u for u in v["unverified"])  # reviewed, not yet published: no credentials

    noise = Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    code, _, body = server.request("POST", "/darkroom/api/verify", raw=buf.getvalue(),
                                   headers={"Content-Type": "image/png"})
    assert code == 200 and json.loads(body)["match"] is None
    assert server.request("POST", "/darkroom/api/verify", raw=b"", headers=headers)[0] == 400
