"""C2PA Content Credentials with c2pa-python: signed claims about where a file came from,
which any C2PA reader (Adobe's, the CAI's verify site, c2patool, a browser extension) checks.

A published derivative carries two manifests: its own (``c2pa.opened`` the original, then
``c2pa.resized`` / ``c2pa.edited`` / ``c2pa.watermarked`` as its channel recipe did, the
watermark's soft binding, and the approval as the custom assertion ``darkroom.approval``),
and, inside its parentOf ingredient, the original's (``c2pa.created`` with IPTC's
trainedAlgorithmicMedia, the model and version as softwareAgent, and the generation record
as ``darkroom.generation``). Both are signed with ES256 by the key in
:class:`darkroom.config.Settings` (``DARKROOM_C2PA_CERT`` / ``DARKROOM_C2PA_KEY`` or the
``darkroom_c2pa`` Airflow connection). Without one, a local test CA under
``$DARKROOM_HOME/c2pa`` signs: made once, with the ``cryptography`` package, named "not for
production" in its certificates. A signature from it is valid, and trusted only where that
CA is configured as the trust anchor; real deployments bring a certificate from a CA their
readers trust.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from darkroom import __version__
from darkroom.config import Settings
from darkroom.errors import DarkroomError
from darkroom.provenance.xmp import DIGITAL_SOURCE_TYPE

log = logging.getLogger("darkroom")

CLAIM_GENERATOR = {"name": "Darkroom", "version": __version__}
APPROVAL_LABEL = "darkroom.approval"
GENERATION_LABEL = "darkroom.generation"
SOFT_BINDING_ALG = "com.github.shieldmnt.invisible-watermark"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
TEST_CA_DIR = "c2pa"
TEST_CA_NAME = "Darkroom local test CA (not for production)"
# The claim thumbnail would be a second, small copy of the picture in every file; the file
# is the picture. Readers show the asset itself.
BUILD_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


class CredentialsError(DarkroomError):
    """No usable signing key, or a manifest that cannot be signed."""


@dataclass(frozen=True)
class SigningKey:
    chain: bytes  # PEM, leaf first
    key: bytes = field(repr=False)  # PEM
    anchors: bytes  # PEM: the roots a signature must chain to
    tsa_url: str | None = None
    test_ca: bool = False
    source: str = ""  # where it came from, for messages


def _pem(value: str, what: str, env: str) -> bytes:
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{env} (the C2PA {what}) = {value!r}: cannot read it ({exc}); "
                               "fix: give a PEM file's path or the PEM text") from None


def _certs(pem: bytes) -> list[bytes]:
    marker = b"-----BEGIN CERTIFICATE-----"
    return [marker + part for part in pem.split(marker)[1:]]


def signing_key(settings: Settings) -> SigningKey:
    """The configured key and chain, or the local test CA's (made on first use)."""
    if settings.c2pa_cert or settings.c2pa_key:
        if not (settings.c2pa_cert and settings.c2pa_key):
            missing = "DARKROOM_C2PA_KEY" if settings.c2pa_cert else "DARKROOM_C2PA_CERT"
            raise CredentialsError(f"C2PA signing: {missing} is not set, but its partner is; fix: set "
                                   "both (the certificate chain and its private key), or neither for "
                                   "the local test CA")
        chain = _pem(settings.c2pa_cert, "certificate chain", "DARKROOM_C2PA_CERT")
        if not _certs(chain):
            raise CredentialsError("DARKROOM_C2PA_CERT holds no PEM certificate; fix: the chain, "
                                   "leaf first, as PEM")
        return SigningKey(chain, _pem(settings.c2pa_key, "private key", "DARKROOM_C2PA_KEY"),
                          trust_anchors(settings), settings.c2pa_tsa_url, source="DARKROOM_C2PA_CERT")
    folder = ensure_test_ca(settings.home / TEST_CA_DIR)
    return SigningKey((folder / "signer-chain.pem").read_bytes(), (folder / "signer.key").read_bytes(),
                      trust_anchors(settings), settings.c2pa_tsa_url, test_ca=True, source=str(folder))


def trust_anchors(settings: Settings) -> bytes | None:
    """The roots a file's credentials must chain to, to count as trusted here; None when
    nothing is configured and no test CA was ever made (verifying never makes one)."""
    if settings.c2pa_trust_anchors:
        return _pem(settings.c2pa_trust_anchors, "trust anchors", "DARKROOM_C2PA_TRUST_ANCHORS")
    if settings.c2pa_cert:  # the chain's own root: at least the chain and key must match
        certs = _certs(_pem(settings.c2pa_cert, "certificate chain", "DARKROOM_C2PA_CERT"))
        return certs[-1] if certs else None
    ca = settings.home / TEST_CA_DIR / "ca.pem"
    return ca.read_bytes() if ca.is_file() else None


def ensure_test_ca(folder: Path) -> Path:
    """A local CA and an ES256 signing certificate under ``folder``, made once: ca.pem,
    signer-chain.pem (leaf, then CA), signer.key. Concurrent callers get the same CA."""
    if (folder / "signer.key").is_file():
        return folder
    from cryptography import x509  # only to make the test CA, once per $DARKROOM_HOME
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Darkroom (local test)")])

    def usage(**on) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name(TEST_CA_NAME)).issuer_name(name(TEST_CA_NAME))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    # C2PA's profile for a signer: digitalSignature, and an EKU from its list (emailProtection).
    leaf = (x509.CertificateBuilder().subject_name(name("Darkroom local test signer (not for production)"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".c2pa-", dir=folder.parent))
    (tmp / "ca.pem").write_bytes(pem(ca))
    (tmp / "signer-chain.pem").write_bytes(pem(leaf) + pem(ca))
    (tmp / "signer.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(tmp / "signer.key", 0o600)
    try:
        os.rename(tmp, folder)  # atomic: a concurrent caller's CA wins, ours is dropped
        log.warning("Made a local C2PA test CA in %s (not for production: real deployments set "
                    "DARKROOM_C2PA_CERT and DARKROOM_C2PA_KEY)", folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# -- manifests -------------------------------------------------------------------------

def original_manifest(parameters: str, darkroom: dict, title: str) -> dict:
    """The original's manifest: created by a trained model (the model and version as the
    software agent), with the generation record as ``darkroom.generation``."""
    return {
        "claim_generator_info": [CLAIM_GENERATOR], "title": title, "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [_created(darkroom)]}},
            {"label": GENERATION_LABEL, "data": {"parameters": parameters, **darkroom}},
        ],
    }


def recipe_actions(channel, darkroom: dict) -> list[dict]:
    """The C2PA actions a channel recipe (darkroom.spec.Channel) performed on the original."""
    actions = []
    if darkroom.get("upscaled"):
        up = darkroom["upscaled"]
        actions.append({"action": "c2pa.resized", "description": f"upscaled to {up.get('to')} px "
                                                                 f"by {up.get('by')}"})
    fit = "padded" if channel.fit == "pad" else f"cropped ({channel.crop})"
    actions.append({"action": "c2pa.resized",
                    "description": f"{fit} and resized to {channel.width}x{channel.height}"})
    if channel.logo is not None:
        actions.append({"action": "c2pa.edited", "description": "logo overlay"})
    if channel.text is not None:
        actions.append({"action": "c2pa.edited", "description": "text overlay"})
    if darkroom.get("watermark"):
        actions.append({"action": "c2pa.watermarked",
                        "description": f"invisible watermark {darkroom['watermark'].get('method')}"})
    return actions


def _created(darkroom: dict) -> dict:
    return {"action": "c2pa.created", "digitalSourceType": DIGITAL_SOURCE_TYPE,
            "softwareAgent": {"name": str(darkroom.get("model") or "unknown model"),
                              "version": str(darkroom.get("model_version") or "")}}


def derivative_manifest(darkroom: dict, channel, approval: dict, title: str, fmt: str, *,
                        created: bool = False) -> dict:
    """A derivative's manifest: ``c2pa.opened`` its parent ingredient (the signed original),
    or, with ``created`` (no original to hand), ``c2pa.created`` itself; then the recipe."""
    first = (_created(darkroom) if created
             else {"action": "c2pa.opened", "parameters": {"ingredientIds": ["original"]}})
    assertions = [
        {"label": "c2pa.actions.v2", "data": {"actions": [first, *recipe_actions(channel, darkroom)]}},
        {"label": APPROVAL_LABEL, "data": approval},
    ]
    mark = darkroom.get("watermark")
    if mark:  # the watermark as C2PA's soft binding: the key it carries, the method that reads it
        assertions.append({"label": "c2pa.soft-binding", "data": {
            "alg": f"{SOFT_BINDING_ALG}.{mark['method']}",
            "blocks": [{"scope": {}, "value": base64.b64encode(bytes.fromhex(mark["key"])).decode()}]}})
    return {"claim_generator_info": [CLAIM_GENERATOR], "title": title, "format": MIME[fmt],
            "assertions": assertions}


# -- signing and reading -----------------------------------------------------------------

def _context(anchors: bytes | None = None, *, building: bool = False):
    import c2pa  # its native library: only publish and verify load it

    config: dict = {"verify": {"verify_trust": True}}
    if anchors:
        config["trust"] = {"trust_anchors": anchors.decode()}
    if building:
        config.update(BUILD_SETTINGS)
    return c2pa.Context(c2pa.Settings.from_dict(config))


def sign(data: bytes, fmt: str, manifest: dict, key: SigningKey,
         ingredient: tuple[bytes, str, str] | None = None) -> bytes:
    """``data`` (png, jpeg or webp) with ``manifest`` signed into it; ``ingredient`` =
    (bytes, format, title) of its parentOf ingredient, which must be named ``original``."""
    import c2pa

    try:
        ctx = _context(key.anchors, building=True)  # the ingredient's own check, recorded in it
        builder = c2pa.Builder(manifest, context=ctx)
        if ingredient is not None:
            body, ing_fmt, ing_title = ingredient
            builder.add_ingredient({"title": ing_title, "relationship": "parentOf",
                                    "instance_id": "original", "label": "original"},
                                   MIME[ing_fmt], io.BytesIO(body))
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, key.chain,
                                                           key.key, key.tsa_url))
        out = io.BytesIO()
        builder.sign(signer, MIME[fmt], io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise CredentialsError(f"C2PA signing failed with the key from {key.source}: {exc}") from None
    return out.getvalue()


@dataclass
class Credentials:
    """What a file's Content Credentials say, and whether they hold."""

    state: str  # trusted | valid (signature holds, signer not trusted here) | invalid | unsigned | unreadable
    errors: list[str] = field(default_factory=list)
    signer: str | None = None
    issuer: str | None = None
    signed_at: str | None = None
    title: str | None = None
    actions: list[str] = field(default_factory=list)
    approval: dict | None = None
    generation: dict | None = None  # the original's darkroom.generation
    created: dict | None = None  # the original's c2pa.created action
    soft_binding: dict | None = None

    @property
    def holds(self) -> bool:
        return self.state in ("trusted", "valid")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _assertion(manifest: dict, label: str) -> dict | None:
    for a in manifest.get("assertions", []):
        if a.get("label") == label:
            return a.get("data")
    return None


def read(data: bytes, anchors: bytes | None = None) -> Credentials:
    """Read and validate a file's manifest store (trusted: chains to ``anchors``)."""
    import c2pa

    try:
        reader = c2pa.Reader(io.BytesIO(data), context=_context(anchors))
        store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        return Credentials("unsigned")
    except c2pa.C2paError as exc:
        return Credentials("unreadable", errors=[str(exc)])
    active = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    state = str(store.get("validation_state") or "invalid").lower()
    failures = (store.get("validation_results") or {}).get("activeManifest", {}).get("failure", [])
    errors = [f"{f.get('code')}: {f.get('explanation')}" for f in failures]
    if state == "valid" and not anchors:
        errors = [e for e in errors if not e.startswith("signingCredential.untrusted")]
    info = active.get("signature_info") or {}
    out = Credentials(state if state in ("trusted", "valid", "invalid") else "invalid", errors,
                      signer=info.get("common_name"), issuer=info.get("issuer"),
                      signed_at=info.get("time"), title=active.get("title"),
                      actions=[a.get("action") for a in (_assertion(active, "c2pa.actions.v2") or {})
                               .get("actions", [])],
                      approval=_assertion(active, APPROVAL_LABEL),
                      soft_binding=_assertion(active, "c2pa.soft-binding"))
    for ing in active.get("ingredients", []):
        parent = store.get("manifests", {}).get(ing.get("active_manifest") or "", {})
        if ing.get("relationship") == "parentOf" and parent:
            out.generation = _assertion(parent, GENERATION_LABEL)
            acts = (_assertion(parent, "c2pa.actions.v2") or {}).get("actions", [])
            out.created = next((a for a in acts if a.get("action") == "c2pa.created"), None)
    if out.created is None:  # an original, signed on its own
        acts = (_assertion(active, "c2pa.actions.v2") or {}).get("actions", [])
        out.created = next((a for a in acts if a.get("action") == "c2pa.created"), None)
        out.generation = out.generation or _assertion(active, GENERATION_LABEL)
    return out


def main() -> None:
    """``python -m darkroom.provenance.credentials``: make the local test CA (make demo)."""
    folder = ensure_test_ca(Settings.from_env().home / TEST_CA_DIR)
    print(f"C2PA test CA: {folder}/ca.pem (signer: {folder}/signer-chain.pem). Not for production: "
          "real deployments set DARKROOM_C2PA_CERT and DARKROOM_C2PA_KEY to a certificate from a "
          "CA their readers trust.")


if __name__ == "__main__":
    main()
