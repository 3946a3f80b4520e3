"""Storage by URI: FileStorage on tmp_path, S3Storage on a real moto server over loopback HTTP.

Every S3 check is made twice where it matters: through darkroom's storage and through an
independent boto3 client (s3_client), so a bug that is symmetric in put/read still shows.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from darkroom.errors import StorageError
from darkroom.storage import (
    FileStorage,
    S3Storage,
    Stored,
    open_storage,
    read_uri,
    sha256_bytes,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # not a real image; bytes are bytes

KEYS = [
    pytest.param("plain.png", id="plain"),
    pytest.param("summer/run_1/originals/abc123.png", id="nested"),
    pytest.param("with space/ünïcode 100%.png", id="space-unicode-percent"),
]


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_sha256_bytes_is_hex_sha256():
    assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_bytes(PNG) == hashlib.sha256(PNG).hexdigest()


# --------------------------------------------------------------------------- FileStorage


@pytest.mark.parametrize("key", KEYS)
def test_file_put_read_stat_round_trip(tmp_path, key):
    store = FileStorage(tmp_path / "assets")

    stored = store.put(key, PNG, "image/png")

    assert stored == Stored(store.uri_for(key), hashlib.sha256(PNG).hexdigest(), len(PNG))
    assert stored.uri.startswith(store.root_uri + "/")
    assert (tmp_path / "assets" / key).read_bytes() == PNG  # really on disk, at the key
    assert store.read(stored.uri) == PNG
    assert store.read(key) == PNG
    assert store.stat(stored.uri) == stored
    assert store.stat(key) == stored
    assert read_uri(stored.uri) == PNG


def test_file_put_overwrites_and_reports_new_digest(tmp_path):
    store = FileStorage(tmp_path)
    first = store.put("a.png", b"first")

    second = store.put("a.png", b"second, longer")

    assert second.uri == first.uri
    assert (second.sha256, second.bytes) == (sha256_bytes(b"second, longer"), 14)
    assert store.read(first.uri) == b"second, longer"
    assert store.stat(first.uri) == second


def test_file_put_leaves_no_temp_files(tmp_path):
    store = FileStorage(tmp_path)
    for i in range(3):
        store.put(f"run/originals/{i}.png", PNG)
    store.put("run/originals/0.png", b"rewritten")
    store.put("empty.bin", b"")

    assert files_under(tmp_path) == {"run/originals/0.png", "run/originals/1.png",
                                     "run/originals/2.png", "empty.bin"}
    assert store.stat("empty.bin") == Stored(store.uri_for("empty.bin"), sha256_bytes(b""), 0)


def _str_instead_of_bytes(root: Path) -> tuple[str, object]:
    return "a.png", "text is not bytes"  # fails while writing the temp file


def _target_is_a_directory(root: Path) -> tuple[str, object]:
    (root / "taken" / "child").mkdir(parents=True)  # fails at the final rename
    return "taken", b"new"


@pytest.mark.parametrize("failure", [_str_instead_of_bytes, _target_is_a_directory],
                         ids=["write-fails", "rename-fails"])
def test_file_failed_put_is_atomic(tmp_path, failure):
    store = FileStorage(tmp_path)
    store.put("a.png", b"old")
    key, data = failure(tmp_path)
    before = files_under(tmp_path)

    with pytest.raises((TypeError, OSError)):
        store.put(key, data)

    assert files_under(tmp_path) == before  # no .tmp-* left behind, nothing half-written
    assert store.read("a.png") == b"old"


def test_file_read_of_missing_raises_storage_error(tmp_path):
    store = FileStorage(tmp_path)
    uri = store.uri_for("nope/missing.png")

    with pytest.raises(StorageError, match=re.escape(uri)):
        store.read(uri)
    with pytest.raises(StorageError, match="does not exist"):
        read_uri(uri)
    assert store.stat(uri) is None
    (tmp_path / "a-dir").mkdir()
    assert store.stat("a-dir") is None  # a directory is not a stored object


def test_file_put_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        FileStorage(tmp_path).put("shared.png", PNG)
    finally:
        os.umask(old)

    assert (tmp_path / "shared.png").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("as_uri", [True, False], ids=["file-uri", "plain-path"])
def test_open_storage_file(tmp_path, as_uri):
    root = tmp_path / "dam"
    store = open_storage(root.as_uri() if as_uri else str(root))

    assert isinstance(store, FileStorage)
    assert store.root_uri == root.as_uri()
    stored = store.put("x/y.png", PNG)
    assert (root / "x" / "y.png").read_bytes() == PNG
    assert read_uri(stored.uri) == PNG


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("url", ["gs://bucket/prefix", "ftp://host/dir", "https://example.com/a",
                                 "azure://container"])
def test_open_storage_unsupported_scheme_names_the_url(url):
    with pytest.raises(StorageError, match=re.escape(repr(url))):
        open_storage(url)


@pytest.mark.parametrize("uri", ["s3:///no-bucket/key", "file:///tmp/x.png", "bucket/key"])
def test_s3_split_rejects_non_s3_uris(uri):
    with pytest.raises(StorageError, match=re.escape(repr(uri))):
        S3Storage.split(uri)


# --------------------------------------------------------------------------- S3Storage


@pytest.mark.parametrize("key", KEYS)
def test_s3_put_read_stat_round_trip(s3_client, bucket, key):
    store = S3Storage(bucket, "/campaigns/summer/", client=s3_client)

    stored = store.put(key, PNG, "image/png")

    full_key = f"campaigns/summer/{key}"
    assert stored == Stored(f"s3://{bucket}/{full_key}", hashlib.sha256(PNG).hexdigest(),
                            len(PNG))
    assert store.uri_for(key) == stored.uri
    obj = s3_client.get_object(Bucket=bucket, Key=full_key)  # independently, at the key
    assert obj["Body"].read() == PNG
    assert obj["ContentType"] == "image/png"
    assert obj["Metadata"] == {"sha256": stored.sha256}
    assert store.read(stored.uri) == PNG
    assert store.stat(stored.uri) == stored


def test_s3_put_overwrites(s3_client, bucket):
    store = S3Storage(bucket, client=s3_client)
    store.put("a.png", b"first")

    second = store.put("a.png", b"second")

    assert second.uri == f"s3://{bucket}/a.png"
    assert store.read(second.uri) == b"second"
    assert store.stat(second.uri) == Stored(second.uri, sha256_bytes(b"second"), 6)


def test_s3_stat_and_read_of_missing(s3_client, bucket):
    store = S3Storage(bucket, "p", client=s3_client)
    uri = store.uri_for("missing.png")

    assert store.stat(uri) is None
    with pytest.raises(StorageError, match=re.escape(uri)):
        store.read(uri)


def test_s3_stat_hashes_objects_written_without_metadata(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="foreign/upload.png", Body=PNG)  # no sha256 tag
    uri = f"s3://{bucket}/foreign/upload.png"

    assert S3Storage(bucket, client=s3_client).stat(uri) == Stored(uri, sha256_bytes(PNG), len(PNG))


def test_s3_put_to_missing_bucket_raises_storage_error(s3_client):
    store = S3Storage("darkroom-no-such-bucket", "p", client=s3_client)

    with pytest.raises(StorageError, match=re.escape("s3://darkroom-no-such-bucket/p/a.png")):
        store.put("a.png", PNG)


def test_s3_read_from_missing_bucket_raises_storage_error(s3_client):
    store = S3Storage("darkroom-no-such-bucket", client=s3_client)

    with pytest.raises(StorageError, match="darkroom-no-such-bucket"):
        store.read("s3://darkroom-no-such-bucket/a.png")


@pytest.mark.parametrize("key", ["sku#12.png", "what?.png"], ids=["hash", "question-mark"])
def test_s3_keys_with_url_delimiters(s3_client, bucket, key):
    store = S3Storage(bucket, client=s3_client)

    stored = store.put(key, PNG)

    assert store.stat(stored.uri) == stored
    assert store.read(stored.uri) == PNG


@pytest.mark.parametrize(
    ("suffix", "root_suffix"),
    [("", ""), ("/", ""), ("/darkroom", "/darkroom"), ("/darkroom/assets/", "/darkroom/assets")],
    ids=["bucket-only", "bucket-slash", "prefix", "deep-prefix-slash"],
)
def test_open_storage_s3_with_endpoint(s3_endpoint, s3_client, bucket, suffix, root_suffix):
    # No client passed: open_storage builds its own from endpoint_url and the environment.
    store = open_storage(f"s3://{bucket}{suffix}", endpoint_url=s3_endpoint)

    assert isinstance(store, S3Storage)
    assert store.root_uri == f"s3://{bucket}{root_suffix}"
    stored = store.put("run/manifest.json", b"{}", "application/json")
    assert stored.uri == f"{store.root_uri}/run/manifest.json"
    key = f"{root_suffix.lstrip('/')}/run/manifest.json".lstrip("/")
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"{}"
    assert store.stat(stored.uri) == stored


def test_read_uri_s3(s3_endpoint, s3_client, bucket):
    uri = S3Storage(bucket, "d", client=s3_client).put("web/x.webp", PNG).uri

    assert read_uri(uri, endpoint_url=s3_endpoint) == PNG
    assert read_uri(uri, s3_client=s3_client) == PNG
    with pytest.raises(StorageError, match="does not exist"):
        read_uri(f"s3://{bucket}/d/web/missing.webp", s3_client=s3_client)
