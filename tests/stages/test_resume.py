"""A generate task killed mid-batch loses only what it had not committed.

The generate stage runs in its own OS process, opened the way the Airflow task opens it
(RunContext.open from the spec, the run's ids and the environment's catalog and storage).
The test SIGKILLs that process group (a lost worker, the OOM killer) once the catalog
shows at least one committed image, checks what the kill left, then runs the task again
in a new process (an Airflow retry) and checks that every planned variant ends up with
exactly one asset and one file: nothing duplicated, nothing missing, nothing stray, and
the images committed before the kill untouched. On a SQLite catalog with file:// storage
and on a PostgreSQL catalog with S3 storage (moto's server).

The kill often lands while the next image is being written (it follows the commit the test
waits for at once), so the last test makes that case certain: it kills a storage write
half-way (the kernel's file-size limit, SIGXFSZ) and checks that the retried write of the
key leaves no temp file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from darkroom import imaging
from darkroom.catalog import Catalog
from darkroom.catalog.tables import Asset, AssetStatus, PlanItem, Run
from darkroom.config import Settings
from darkroom.stages import generate, plan, validate
from darkroom.stages.context import RunContext
from darkroom.storage import FileStorage, S3Storage
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"
DAG_ID, RUN_ID = "campaign__spring_tiles", "manual__resume"
VARIANTS = 10  # one mapped batch of 10, two images per forward pass: five passes
CONF = {"limit": VARIANTS}
FIRST_COMMIT_TIMEOUT = 240  # seconds: imports, model load and one pass on a busy 2-core box
RETRY_TIMEOUT = 300

# The task as the Airflow worker runs it (operators/generate.py), minus Airflow. The
# process imports its libraries first, then waits for "go" on stdin before it opens the
# run: the ~10 s of torch/diffusers imports overlap the test's own work, and the task
# itself (open the run, generate the batch) starts only when the test says so.
WORKER = textwrap.dedent('''
    import json, sys
    import diffusers, torch  # noqa: F401  (warm: what the task imports anyway)
    from darkroom.generation import local  # noqa: F401  (what a local-backend task loads)
    from darkroom.stages import generate
    from darkroom.stages.context import RunContext
    spec, dag_id, run_id, conf, batch = sys.argv[1:6]
    if sys.stdin.readline().strip() != "go":
        sys.exit("no go")
    ctx = RunContext.open(spec, dag_id, run_id, json.loads(conf))
    counts = generate.run(ctx, int(batch))
    print("RESULT " + json.dumps(counts), flush=True)
''')


def _spec(tmp_path: Path) -> Path:
    """spring_tiles, one seed per product, one mapped batch; 20 steps, so that a forward
    pass of two images takes the better part of a second on one CPU thread and the kill,
    sent as soon as the first image is committed, lands with passes still to run."""
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["brand"]["restricted_terms_file"] = str(ROOT / "include" / "brand" / "restricted_terms.txt")
    data["products"]["expectations"] = str(ROOT / "include" / "expectations" / "spring_tiles.json")
    data["products"]["source"] = str(CAMPAIGNS / "spring_tiles.products.csv")
    data["generation"].update(seeds_per_variant=1, variants_per_task=12, batch_size=2, steps=20,
                              width=64, height=64)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Task:
    """One attempt of the generate task for batch 0, in its own process group."""

    def __init__(self, tmp_path: Path, name: str, spec: Path, env: dict[str, str]):
        self.log = tmp_path / f"{name}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(spec), DAG_ID, RUN_ID, json.dumps(CONF), "0"],
            stdin=subprocess.PIPE, stdout=self._out, stderr=subprocess.STDOUT, env=env,
            cwd=tmp_path, start_new_session=True)  # its own process group, killed whole

    def go(self) -> None:
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except BrokenPipeError:  # it died while importing: its exit code and output tell why
            pass

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group is this process's own session
        self.proc.wait(timeout=60)
        self._out.close()

    def result(self, timeout: float) -> dict:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the retried task did not finish in {timeout} s:\n{self.output()[-4000:]}")
        self._out.close()
        out = self.output()
        assert rc == 0, f"the retried task failed (exit {rc}):\n{out[-4000:]}"
        lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
        assert lines, out[-4000:]
        return json.loads(lines[-1].removeprefix("RESULT "))


def _assets(catalog: Catalog) -> dict[str, Asset]:
    with catalog.session() as s:
        return {a.id: a for a in s.scalars(select(Asset))}


def _count_generated(catalog: Catalog) -> int:
    with catalog.session() as s:
        return s.scalar(select(func.count()).select_from(Asset)
                        .where(Asset.status == AssetStatus.generated))


def _objects(ctx: RunContext) -> dict[str, tuple[str, tuple]]:
    """Every object under the storage root, dotfiles included: URI -> (sha256, identity),
    identity telling a rewrite from the same object (inode and mtime; S3: ETag and time)."""
    found = {}
    if isinstance(ctx.storage, FileStorage):
        for p in ctx.storage.root.rglob("*"):
            if p.is_file():
                st = p.stat()
                found[p.as_uri()] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                     (st.st_ino, st.st_mtime_ns))
        return found
    assert isinstance(ctx.storage, S3Storage)
    client, bucket = ctx.storage.client, ctx.storage.bucket
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                   Prefix=ctx.storage.prefix + "/"):
        for obj in page.get("Contents", []):
            uri = f"s3://{bucket}/{obj['Key']}"
            found[uri] = (hashlib.sha256(ctx.storage.read(uri)).hexdigest(),
                          (obj["ETag"], obj["LastModified"]))
    return found


def _check_committed(assets: dict[str, Asset], objects: dict, ctx: RunContext) -> None:
    """Every committed image is whole in storage: the catalog's bytes and sha256, a PNG that
    decodes, carrying its own asset id."""
    for a in assets.values():
        assert a.status == AssetStatus.generated, (a.id, a.status, a.failure_reason)
        assert a.uri in objects, f"asset {a.id} is committed but {a.uri} is not in storage"
        data = ctx.storage.read(a.uri)
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (a.sha256, a.bytes), a.uri
        assert imaging.decode(data).size == (64, 64)
        assert imaging.read_provenance(data).darkroom["asset_id"] == a.id


def _kill_and_retry(tmp_path: Path, settings: Settings, env: dict[str, str], s3_client=None):
    spec = _spec(tmp_path)
    factory = (lambda _conn, _endpoint: s3_client) if s3_client is not None else None
    # One torch thread: two would fight the other processes on a busy 2-core machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    # Both attempts warm their imports while this process validates and plans; each opens
    # the run and generates only when told "go" (the retry: after the first is killed).
    first = Task(tmp_path, "attempt-1", spec, env)
    retry = Task(tmp_path, "attempt-2", spec, env)
    try:
        ctx = RunContext.open(spec, DAG_ID, RUN_ID, CONF, settings=settings,
                                     s3_client=s3_client, s3_client_factory=factory)
        validate.run(ctx)
        assert plan.run(ctx) == [0]  # ONE mapped batch
        with ctx.catalog.session() as s:
            planned = list(s.scalars(select(PlanItem.variant_id).where(
                PlanItem.run_pk == ctx.run_pk, PlanItem.batch == 0, PlanItem.status == "planned")))
        assert len(planned) == VARIANTS

        # 1. Start the task; kill its process group as soon as one image is committed.
        first.go()
        started = time.monotonic()
        deadline = started + FIRST_COMMIT_TIMEOUT
        seen = 0
        while True:
            seen = _count_generated(ctx.catalog)
            if seen >= 1:
                break
            if first.proc.poll() is not None:
                pytest.fail(f"the task exited (code {first.proc.returncode}) before committing "
                            f"any image:\n{first.output()[-4000:]}")
            if time.monotonic() > deadline:
                first.kill()
                pytest.fail(f"no image committed in {FIRST_COMMIT_TIMEOUT} s:\n{first.output()[-4000:]}")
            time.sleep(0.02)
        exited_before_kill = first.proc.poll() is not None
        first.kill()
        # Not vacuous: the kill must have landed while the task still had work to do.
        assert not exited_before_kill and first.proc.returncode == -signal.SIGKILL, (
            f"the task finished before the kill (exit {first.proc.returncode}); make the work "
            f"longer:\n{first.output()[-4000:]}")

        # 2. Right after the kill: some, not all, committed; each committed image whole.
        before = _assets(ctx.catalog)
        assert 1 <= len(before) < VARIANTS, (
            f"{len(before)} of {VARIANTS} committed when killed; the kill must land mid-batch")
        assert {a.variant_id for a in before.values()} <= set(planned)
        objects_at_kill = _objects(ctx)
        _check_committed(before, objects_at_kill, ctx)
        report = ctx.storage.uri_for(ctx.key("validation.html"))
        in_flight = sorted(set(objects_at_kill) - {a.uri for a in before.values()} - {report})
        # All the kill may leave besides: the original (or a temp file beside it) of the
        # variant being written, not yet committed.
        originals = ctx.storage.uri_for(ctx.key("originals")) + "/"
        uncommitted = {ctx.storage.uri_for(ctx.key("originals", f"{v}.png"))
                       for v in set(planned) - {a.variant_id for a in before.values()}}
        assert all(u in uncommitted or u.startswith(originals + ".tmp-") for u in in_flight), in_flight
        print(f"killed after {time.monotonic() - started:.1f} s with {len(before)}/{VARIANTS} "
              f"committed (seen {seen} when the kill was sent); uncommitted objects left by the "
              f"kill: {in_flight or 'none'}")

        # 3. The retry: a new process runs the same task for the same batch.
        retry.go()
        started = time.monotonic()
        counts = retry.result(RETRY_TIMEOUT)
        print(f"retry took {time.monotonic() - started:.1f} s: {counts}")
        assert counts == {"batch": 0, "skipped": len(before), "generated": VARIANTS - len(before)}, counts

        # 4. Exactly one asset per planned variant: generated, version 1, whole in storage.
        after = _assets(ctx.catalog)
        assert sorted(a.variant_id for a in after.values()) == sorted(planned)
        for a in after.values():
            assert (a.version, a.supersedes_id) == (1, None), (a.id, a.version, a.supersedes_id)
            assert a.run_pk == ctx.run_pk
        objects = _objects(ctx)
        _check_committed(after, objects, ctx)
        # 5. What was committed before the kill is untouched: same row, same object.
        for asset_id, a in before.items():
            b = after[asset_id]
            assert (b.uri, b.sha256, b.bytes, b.created_at) == (a.uri, a.sha256, a.bytes, a.created_at)
            assert objects[a.uri] == objects_at_kill[a.uri], f"{a.uri} was rewritten by the retry"
        # 6. Nothing stray: the catalog's originals and the validation report, nothing else
        #    (no temp file or half-written object left by the killed write).
        expected = {a.uri for a in after.values()} | {report}
        assert set(objects) == expected, (
            f"stray: {sorted(set(objects) - expected)}; missing: {sorted(expected - set(objects))}")
        # 7. And a third attempt has nothing left to do.
        again = generate.run(ctx, 0)
        assert again == {"batch": 0, "skipped": VARIANTS}, again
        with ctx.catalog.session() as s:
            assert s.scalar(select(func.count()).select_from(Asset)) == VARIANTS
            assert s.scalars(select(Run)).one().run_id == RUN_ID
    finally:
        for task in (first, retry):
            if task.proc.poll() is None:
                task.kill()


@pytest.mark.usefixtures("use_tiny_model")
@pytest.mark.parametrize("catalog_url,storage", [
    pytest.param("sqlite", "file", id="sqlite-file"),
    pytest.param("postgres", "s3", id="postgres-s3", marks=pytest.mark.postgres),
], indirect=["catalog_url"])
def test_killed_generate_task_resumes(request, tmp_path, catalog_url, storage):
    """Each catalog backend once and each storage once (two processes start per case, and
    each pays ~10 s of torch/diffusers imports: the full cross product would double that)."""
    env = {"DARKROOM_CATALOG_URL": catalog_url}
    s3_client = None
    if storage == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        s3_client = request.getfixturevalue("s3_client")
        env["DARKROOM_STORAGE_URL"] = f"s3://{request.getfixturevalue('bucket')}/work"
        env["DARKROOM_S3_ENDPOINT_URL"] = endpoint
    settings = Settings.from_env(catalog_url=catalog_url, storage_url=env.get("DARKROOM_STORAGE_URL"),
                                 s3_endpoint_url=env.get("DARKROOM_S3_ENDPOINT_URL"))
    _kill_and_retry(tmp_path, settings, env, s3_client=s3_client)


# --------------------------------------------------------------------------- one write

PUT = textwrap.dedent('''
    import resource, signal, sys
    from darkroom.storage import FileStorage
    root, key, size, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = FileStorage(root)
    data = bytes(range(256)) * (size // 256)
    if limit:
        # Past `limit` bytes in any file the kernel kills this process with SIGXFSZ, in the
        # middle of the write: the death of a task mid-write, at a known byte.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    store.put(key, data, "image/png")
''')


def _put(root: Path, key: str, size: int, limit: int = 0) -> int:
    return subprocess.run([sys.executable, "-c", PUT, str(root), key, str(size), str(limit)],
                          timeout=120, capture_output=True).returncode


@pytest.mark.parametrize("existing", [False, True], ids=["new-key", "overwrite"])
def test_put_killed_mid_write_leaves_nothing_after_the_retry(tmp_path, existing):
    root = tmp_path / "assets"
    key = "spring_tiles/manual__1/originals/abc.png"
    size, limit = 1 << 20, 64 << 10
    data = bytes(range(256)) * (size // 256)
    if existing:
        FileStorage(root).put(key, b"the previous image")

    assert _put(root, key, size, limit) == -signal.SIGXFSZ
    left = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    # Not vacuous: the process died with a partial temp file on disk...
    partial = [name for name, n in left.items() if n == limit]
    assert len(partial) == 1 and Path(partial[0]).name.startswith(".tmp-"), left
    # ...and the key itself is never half-written: absent, or still the previous image.
    if existing:
        assert (root / key).read_bytes() == b"the previous image"
    else:
        assert key not in left

    assert _put(root, key, size) == 0  # the retry, in a new process
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == {key}, f"left behind: {sorted(files - {key})}"
    assert (root / key).read_bytes() == data
