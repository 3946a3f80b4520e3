"""Storage by URI: ``file://`` under $DARKROOM_HOME/assets by default, ``s3://`` through boto3.

Keys are deterministic (``{campaign}/{run}/originals/{variant}.png``) so a retried write
lands on the same object, and every write reports the sha256 the catalog records.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from darkroom.errors import StorageError
from darkroom.ids import check_key

# Temp files are chmod-ed explicitly (a reused one may carry other bits): published files
# must be readable like any other file the process writes, so apply the process umask.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temp_name(name: str) -> str:
    """The temp file a put of ``name`` writes before renaming it into place."""
    return ".tmp-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Stored:
    uri: str
    sha256: str
    bytes: int


class Storage(Protocol):
    root_uri: str

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> Stored: ...

    def read(self, uri: str) -> bytes: ...

    def stat(self, uri: str) -> Stored | None: ...

    def uri_for(self, key: str) -> str: ...


class FileStorage:
    """A folder. Writes go to a temp file and are renamed, so readers never see half a file;
    the temp file of a writer killed mid-write is reused, and so removed, by the key's next put."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root_uri = self.root.as_uri()

    def _path(self, uri_or_key: str) -> Path:
        if uri_or_key.startswith("file://"):
            path = Path(unquote(urlparse(uri_or_key).path))
        else:
            path = self.root / check_key(uri_or_key)
        return path

    def _inside(self, path: Path) -> Path:
        # A folder under the root may be a symlink that leads out of it: check where the
        # write really lands (resolve() follows the parts that exist) before making folders.
        real = path.parent.resolve()
        if real != self.root and self.root not in real.parents:
            raise StorageError(f"refused to write {path}: it resolves to {real}, outside the "
                               f"storage root {self.root}")
        return path

    def uri_for(self, key: str) -> str:
        return (self.root / check_key(key)).as_uri()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> Stored:
        path = self._path(key)
        while True:
            self._inside(path).parent.mkdir(parents=True, exist_ok=True)
            # One temp name per key, locked while written: a retried put of the key reuses
            # (and so removes) what a killed writer left, and concurrent puts of the same key
            # take turns instead of writing into one file.
            tmp = path.with_name(_temp_name(path.name))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # The writer before us may have renamed this file into place (or removed it)
                # while we waited: then it is no longer the temp file, and we start again.
                try:
                    current = os.stat(tmp, follow_symlinks=False)
                except FileNotFoundError:
                    current = None
                mine = os.fstat(fd)
                if current is None or (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                    continue
                try:
                    os.ftruncate(fd, 0)
                    os.fchmod(fd, 0o666 & ~_UMASK)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.replace(tmp, path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            finally:
                os.close(fd)  # releases the lock
            return Stored(path.as_uri(), sha256_bytes(data), len(data))

    def read(self, uri: str) -> bytes:
        try:
            return self._path(uri).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri} does not exist") from None

    def stat(self, uri: str) -> Stored | None:
        path = self._path(uri)
        if not path.is_file():
            return None
        data = path.read_bytes()
        return Stored(path.as_uri(), sha256_bytes(data), len(data))


class S3Storage:
    """A bucket and prefix. ``endpoint_url`` points at MinIO or moto's server."""

    def __init__(self, bucket: str, prefix: str = "", *, client=None, endpoint_url: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            import boto3  # ~0.5 s to import: file storage never needs it

            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client
        self.root_uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @staticmethod
    def split(uri: str) -> tuple[str, str]:
        # Not urlparse: keys may hold '#' or '?' (product ids are free text).
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or not bucket:
            raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
        return bucket, key.lstrip("/")

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> Stored:
        digest = sha256_bytes(data)
        full = self._key(key)
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=content_type,
                Metadata={"sha256": digest},
            )
        except Exception as exc:  # botocore's errors carry the useful text
            raise StorageError(f"could not write s3://{self.bucket}/{full}: {exc}") from exc
        return Stored(f"s3://{self.bucket}/{full}", digest, len(data))

    def read(self, uri: str) -> bytes:
        bucket, key = self.split(uri)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise StorageError(f"{uri} does not exist") from None
        except Exception as exc:
            raise StorageError(f"could not read {uri}: {exc}") from exc

    def stat(self, uri: str) -> Stored | None:
        bucket, key = self.split(uri)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise StorageError(f"could not read {uri}: {exc}") from exc
        digest = head.get("Metadata", {}).get("sha256")
        if digest is None:  # written by someone else: hash the content
            digest = sha256_bytes(self.read(uri))
        return Stored(uri, digest, head["ContentLength"])


def open_storage(url: str, *, s3_client=None, endpoint_url: str | None = None) -> Storage:
    """A storage for a root URL: ``file:///path``, a plain path, or ``s3://bucket/prefix``."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path, client=s3_client, endpoint_url=endpoint_url)
    if parsed.scheme in ("file", ""):
        return FileStorage(unquote(parsed.path) if parsed.scheme else url)
    raise StorageError(f"unsupported storage URL {url!r}; use file:///path or s3://bucket/prefix")


def read_uri(uri: str, *, s3_client=None, endpoint_url: str | None = None) -> bytes:
    """Read any URI the catalog holds, whatever storage wrote it."""
    if uri.startswith("s3://"):
        return S3Storage(S3Storage.split(uri)[0], client=s3_client, endpoint_url=endpoint_url).read(uri)
    return FileStorage("/").read(uri)
