"""Content Credentials (#14 item 3), read back with c2pa-python's own Reader: trusted with
the test CA as anchor, invalid after one flipped byte; what the manifests assert; publishing
refuses what does not verify; the key comes from DARKROOM_* settings or a connection."""

from __future__ import annotations

import io
import json

import c2pa
import pytest
from darkroom import __version__
from darkroom.catalog.tables import Asset, AssetStatus, Publication
from darkroom.config import Settings
from darkroom.provenance import credentials
from darkroom.provenance.xmp import DIGITAL_SOURCE_TYPE
from darkroom.stages import publish
from darkroom.stages.context import RunContext
from darkroom.stages.sign import PublishRefused

from tests.provenance.conftest import APPROVER, NOTE, run_and_publish

MIME = {"jpg": "image/jpeg", "webp": "image/webp", "png": "image/png"}


def read_store(data: bytes, mime: str, anchors: bytes | None) -> dict:
    config: dict = {"verify": {"verify_trust": True}}
    if anchors:
        config["trust"] = {"trust_anchors": anchors.decode()}
    ctx = c2pa.Context(c2pa.Settings.from_dict(config))
    return json.loads(c2pa.Reader(mime, io.BytesIO(data), context=ctx).json())


def assertion(manifest: dict, label: str) -> dict:
    return next(a["data"] for a in manifest["assertions"] if a["label"] == label)


def test_published_files_carry_trusted_credentials_that_break_when_a_byte_flips(published):
    anchors = (published.settings.home / "c2pa" / "ca.pem").read_bytes()  # the local test CA
    assets = {a.id: a for a in published.assets()}
    for channel in ("marketplace", "web_tile", "plain"):
        for path in published.files(channel):
            data, mime = path.read_bytes(), MIME[path.suffix[1:]]
            store = read_store(data, mime, anchors)
            assert store["validation_state"] == "Trusted", (path, store.get("validation_results"))
            assert read_store(data, mime, None)["validation_state"] == "Valid"  # signer unknown there
            active = store["manifests"][store["active_manifest"]]
            assert active["claim_generator_info"][0]["name"] == "Darkroom"
            assert active["claim_generator_info"][0]["version"] == __version__
            actions = [a["action"] for a in assertion(active, "c2pa.actions.v2")["actions"]]
            approval = assertion(active, credentials.APPROVAL_LABEL)
            asset = assets[approval["asset_id"]]
            assert (approval["decision"], approval["reviewer"], approval["note"]) == ("approved", APPROVER, NOTE)
            assert approval["channel"] == channel
            assert actions[0] == "c2pa.opened" and "c2pa.resized" in actions
            assert ("c2pa.edited" in actions) == (channel == "marketplace")  # its logo overlay
            assert ("c2pa.watermarked" in actions) == (channel != "plain")  # watermark: false
            # The original, as the parentOf ingredient, with its own manifest: made by the model.
            [parent] = [i for i in active["ingredients"] if i["relationship"] == "parentOf"]
            original = store["manifests"][parent["active_manifest"]]
            [created] = assertion(original, "c2pa.actions.v2")["actions"]
            assert created["action"] == "c2pa.created"
            assert created["digitalSourceType"] == DIGITAL_SOURCE_TYPE
            assert created["softwareAgent"] == {"name": asset.model_name, "version": asset.model_version}
            generation = assertion(original, credentials.GENERATION_LABEL)
            assert generation["asset_id"] == asset.id and f"Seed: {asset.seed}" in generation["parameters"]
            # One flipped byte in the picture: invalid.
            bad = bytearray(data)
            bad[len(bad) * 2 // 3] ^= 0x01
            broken = read_store(bytes(bad), mime, anchors)
            assert broken["validation_state"] == "Invalid", path
            assert credentials.read(bytes(bad), anchors).state == "invalid"


def test_publishing_refuses_files_whose_credentials_do_not_verify(tmp_path, use_tiny_model, monkeypatch):
    # A signing key whose chain does not lead to the configured trust anchor: the signature is
    # made, but it cannot be trusted, so nothing may be published.
    other = credentials.ensure_test_ca(tmp_path / "other-ca")
    mine = credentials.ensure_test_ca(tmp_path / "my-ca")
    monkeypatch.setenv("DARKROOM_C2PA_CERT", str(mine / "signer-chain.pem"))
    monkeypatch.setenv("DARKROOM_C2PA_KEY", str(mine / "signer.key"))
    monkeypatch.setenv("DARKROOM_C2PA_TRUST_ANCHORS", str(other / "ca.pem"))
    pub = run_and_publish(tmp_path, limit=1, publish=False)
    with pytest.raises(PublishRefused, match="read back as valid"):
        publish.run(pub.ctx)
    assert not list(pub.dam.rglob("*.jpg")) and not list(pub.dam.rglob("*.webp"))
    with pub.ctx.catalog.session() as s:
        assert s.query(Publication).count() == 0
        assert {a.status for a in s.query(Asset)} == {AssetStatus.approved}  # claim released
    # With the right anchor the same run publishes, signed by the configured key, not the test CA.
    monkeypatch.setenv("DARKROOM_C2PA_TRUST_ANCHORS", str(mine / "ca.pem"))
    ctx = RunContext.open(pub.spec_path, pub.ctx.dag_id, pub.ctx.run_id, settings=Settings.from_env())
    assert publish.run(ctx)["files"] == 3
    assert not (ctx.settings.home / "c2pa").exists()
    data = next(pub.dam.rglob("*.jpg")).read_bytes()
    assert credentials.read(data, (mine / "ca.pem").read_bytes()).state == "trusted"


def test_signing_settings_name_what_is_missing(tmp_path, monkeypatch):
    ca = credentials.ensure_test_ca(tmp_path / "ca")
    monkeypatch.setenv("DARKROOM_C2PA_CERT", str(ca / "signer-chain.pem"))
    with pytest.raises(credentials.CredentialsError, match="DARKROOM_C2PA_KEY is not set"):
        credentials.signing_key(Settings.from_env())
    monkeypatch.setenv("DARKROOM_C2PA_KEY", str(tmp_path / "nope.key"))
    with pytest.raises(credentials.CredentialsError, match="DARKROOM_C2PA_KEY .*cannot read it"):
        credentials.signing_key(Settings.from_env())
    monkeypatch.setenv("DARKROOM_C2PA_KEY", (ca / "signer.key").read_text())  # PEM text works too
    key = credentials.signing_key(Settings.from_env())
    assert not key.test_ca and key.anchors == (ca / "ca.pem").read_bytes()  # the chain's own root
    assert "PRIVATE KEY" not in repr(Settings.from_env())  # never in logs


def test_the_test_ca_is_made_once(tmp_path):
    first = credentials.ensure_test_ca(tmp_path / "c2pa")
    key = (first / "signer.key").read_bytes()
    assert credentials.ensure_test_ca(tmp_path / "c2pa") == first
    assert (first / "signer.key").read_bytes() == key
    assert (first / "signer.key").stat().st_mode & 0o077 == 0


def test_the_key_can_come_from_an_airflow_connection(tmp_path, monkeypatch):
    from darkroom_operators.hooks import DarkroomHook

    ca = credentials.ensure_test_ca(tmp_path / "ca")
    monkeypatch.delenv("DARKROOM_C2PA_CERT", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_DARKROOM_C2PA", json.dumps({
        "conn_type": "generic", "password": (ca / "signer.key").read_text(),
        "extra": {"certificate_chain": (ca / "signer-chain.pem").read_text(),
                  "trust_anchors": (ca / "ca.pem").read_text()}}))
    settings = DarkroomHook().settings()
    key = credentials.signing_key(settings)
    assert not key.test_ca and key.chain == (ca / "signer-chain.pem").read_bytes()
    assert key.anchors == (ca / "ca.pem").read_bytes()
