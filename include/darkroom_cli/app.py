"""The ``darkroom`` command line (the ``darkroom`` console script: ``darkroom_cli.app:main``).

It lives outside the Airflow-free core: ``darkroom run`` drives Airflow in-process through the
operators' local runner (darkroom_operators.local_run). Commands import what is heavy (Airflow,
MLflow, torch) when they run, so ``darkroom review list`` starts in a fraction of a second."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from darkroom.catalog import lineage, reviews
from darkroom.catalog.db import Catalog
from darkroom.config import Settings, apply_airflow_env, local_user
from darkroom.errors import DarkroomError
from darkroom.generation.models import Lora
from darkroom.ids import key_part
from darkroom.params import RunConf
from darkroom.spec import DAG_PREFIX, find_spec, json_schema, load_spec
from darkroom.stages.reproduce import regenerate_asset
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(help="Darkroom: campaign specs in, traceable approved images out.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
review_app = typer.Typer(help="Approve or reject generated assets.", no_args_is_help=True)
assets_app = typer.Typer(help="Find assets and their lineage.", no_args_is_help=True)
models_app = typer.Typer(help="Models: the offline tiny pipeline; model profiles in the MLflow registry.",
                         no_args_is_help=True)
spec_app = typer.Typer(help="Campaign specs: check them, export the JSON Schema.", no_args_is_help=True)
app.add_typer(review_app, name="review")
app.add_typer(assets_app, name="assets")
app.add_typer(models_app, name="models")
app.add_typer(spec_app, name="spec")

# No Rich markup in anything printed: messages and values carry square brackets (`[bold red]`
# in a product name, the id pattern `^[a-z][a-z0-9_]{1,62}$`), which markup would swallow.
# Styles are given as styles, never inside the text.
console = Console(markup=False)
err = Console(stderr=True, markup=False)


def _catalog() -> Catalog:
    return Catalog(Settings.from_env().catalog_url)


# -- run --------------------------------------------------------------------------------

@app.command()
def run(
    campaign: Annotated[str, typer.Argument(help="Spec file path, or a campaign id in include/campaigns")],
    approve_all: Annotated[bool, typer.Option(
        "--approve-all", help="Approve every QA-passed asset as the local user")] = False,
    conf: Annotated[str, typer.Option(help='Run Params as JSON, e.g. \'{"limit": 4}\'')] = "{}",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Airflow's task logs")] = False,
) -> None:
    """Run one DAG run of a campaign in this process, through Airflow's dag.test."""
    settings = Settings.from_env()
    try:
        run_conf = json.loads(conf)
        if not isinstance(run_conf, dict):
            raise ValueError("expected a JSON object")
    except ValueError as exc:
        raise typer.BadParameter(f"--conf {conf!r} is not a JSON object: {exc}") from None
    # The Params checked here, before Airflow starts, with the Param, value and fix named.
    run_conf = RunConf.from_dict(run_conf, source=f"--conf {conf}").as_conf()
    spec_path = find_spec(campaign, settings.campaigns_dir).resolve()
    loaded = load_spec(spec_path)
    from darkroom_operators.local_run import run_campaign  # Airflow: seconds to import

    console.print(Text.assemble((f"Running {loaded.spec.dag_id}", "bold"), f" from {spec_path}"))
    result = run_campaign(spec_path, run_conf, approve_all=approve_all, settings=settings,
                          console=console, quiet_logs=not verbose)
    _print_summary(result, show_plan=bool(run_conf.get("dry_run")))
    _exit_unless_success(result)


def _exit_unless_success(result) -> None:
    """Exit 1 for a failed run; 128 + the signal for a run a signal stopped."""
    if result.stopped_by:
        err.print(f"\nStopped by {signal.Signals(result.stopped_by).name}: what had finished is kept "
                  "(files are written whole or not at all, catalog rows in transactions); run the "
                  "same command again to go on: images already made are reused.", style="red",
                  soft_wrap=True)
        raise typer.Exit(128 + result.stopped_by)
    if result.state != "success":
        raise typer.Exit(1)


@app.command()
def regenerate(
    campaign: Annotated[str, typer.Argument(help="Spec file path, or a campaign id in include/campaigns")],
    model_version: Annotated[str, typer.Option(
        help="Model version for the new assets: a profile version or alias, or a revision")],
    where: Annotated[list[str] | None, typer.Option(
        help="Only variants whose assets match KEY=VALUE (assets search filters, e.g. "
             "status=rejected, qa_failed=blur, product=SKU-1); repeat to combine")] = None,
    approve_all: Annotated[bool, typer.Option("--approve-all")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Regenerate a campaign with another model version: one DAG run in this process with
    conf {"model_version": V} (and the matching variants). New asset versions supersede the
    old ones, which stay; QA, review and publishing run for the new versions only."""
    settings = Settings.from_env()
    spec_path = find_spec(campaign, settings.campaigns_dir).resolve()
    loaded = load_spec(spec_path)
    RunConf.from_dict({"model_version": model_version}, source="--model-version")
    conf: dict = {"model_version": model_version}
    if where:
        filters = {}
        for item in where:
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            allowed = ("product", "status", "model_profile", "model_version", "lora", "template_version",
                       "since", "until", "qa_failed", "reviewer", "run_id")
            if not sep or key not in allowed:
                raise typer.BadParameter(f"--where {item!r}: expected KEY=VALUE with KEY one of {allowed}")
            filters[key] = value
        conf["variants"] = lineage.variant_ids(_catalog(), campaign=loaded.spec.id, **filters)
        if not conf["variants"]:
            err.print(f"No asset of {loaded.spec.id} matches {where}: nothing to regenerate")
            raise typer.Exit(1)
        console.print(f"{len(conf['variants'])} variants match {where}")
    from darkroom_operators.local_run import run_campaign  # Airflow: seconds to import

    console.print(Text.assemble((f"Regenerating {loaded.spec.dag_id}", "bold"),
                                f" with model version {model_version}"))
    result = run_campaign(spec_path, conf, approve_all=approve_all, settings=settings,
                          console=console, quiet_logs=not verbose)
    _print_summary(result)
    _exit_unless_success(result)


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="Airflow run id or MLflow run id")],
    run_b: Annotated[str, typer.Argument(help="Airflow run id or MLflow run id")],
    out: Annotated[Path | None, typer.Option(
        help="PNG to write (default: $DARKROOM_HOME/compare/...)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Two runs side by side: their contact sheets in one PNG, QA metrics in a table."""
    settings = Settings.from_env()
    out = out or settings.home / "compare" / f"{key_part(run_a)}__vs__{key_part(run_b)}.png"
    result = lineage.compare_runs(_catalog(), run_a, run_b, out)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    table = Table("", run_a, run_b)
    for name, a, b in result["rows"]:
        table.add_row(name, str(a), str(b))
    console.print(table)
    console.print(f"Contact sheets side by side: {out}")


def _local(uri: str | None) -> str:
    return uri.removeprefix("file://") if uri else "-"


def _policy_line(summary: dict) -> str:
    """Variants the restricted-terms policy rejected, with each term and the field it came from."""
    n = summary.get("policy_rejected", 0)
    terms = summary.get("policy_terms") or {}
    return f"{n} rejected" + (": " + "; ".join(f"{t} x{k}" for t, k in terms.items()) if terms else "")


def _print_summary(result, show_plan: bool = False) -> None:
    """The run's outcome, from the catalog's counts (the same the gallery and the sensor read)."""
    c = result.counts
    r = result.run
    summary = r.summary if r else {}
    colour = "green" if result.state == "success" else "red"
    console.print(f"\n{result.dag_id} {result.run_id}: {result.state}", style=f"bold {colour}")
    planned = summary.get("planned")
    held = summary.get("held_by_other_runs") or {}
    rows = [
        ("planned", "-" if planned is None else planned),
        ("policy", _policy_line(summary)),
        ("generated", f"{c.generated} ({c.failed} failed)"),
        ("reused", f"{summary.get('reused', 0)} (settled by earlier runs: published, rejected or "
                   "failed QA; not reviewed again)"),
        ("adopted", f"{summary.get('adopted', 0)} (left undecided by runs that ended: checked, "
                    "reviewed and published here)"),
        ("other runs", ", ".join(f"{n} drawn by {r}, still running" for r, n in held.items()) or "none"),
        ("QA", f"{c.checked - c.qa_failed} passed, {c.qa_failed} failed"),
        ("approved", c.approved),
        ("rejected", c.rejected),
        ("published", c.published),
        ("model version", r.model_version if r else None),
        ("contact sheet", _local(r.contact_sheet_uri if r else None)),
        ("manifest", _local(r.manifest_uri if r else None)),
        ("MLflow run", r.mlflow_run_id if r else None),
        ("Airflow log", result.log_file),
    ]
    for name, value in rows:
        console.print(f"  {name:<14} {value}", soft_wrap=True, highlight=False)
    if show_plan and summary.get("plan"):
        console.print(f"\n{summary['plan']}", soft_wrap=True, highlight=False)
    for message in result.errors:
        err.print(f"\n{message}", style="red", highlight=False, soft_wrap=True)
    if result.failed_tasks:
        err.print(f"\nFailed: {', '.join(result.failed_tasks)}", style="red", highlight=False)
        if result.not_run:
            err.print(f"Not run (upstream failed): {', '.join(result.not_run)}", highlight=False)
        err.print(f"Task logs: {result.log_file}", highlight=False)


# -- review -----------------------------------------------------------------------------

def _asset_line(a) -> dict:
    return {"asset_id": a.id, "status": a.status, "product_id": a.variant.product_id,
            "asset_type": a.variant.asset_type, "seed": a.seed, "uri": a.uri,
            "qa": {q.check: q.passed for q in a.qa_results}}


@review_app.command("list")
def review_list(
    campaign: Annotated[str | None, typer.Option(help="Campaign id")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Airflow run id")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Assets that wait for a decision."""
    assets = reviews.waiting(_catalog(), campaign, run_id)
    if as_json:
        print(json.dumps([_asset_line(a) for a in assets], indent=2))
        return
    table = Table("asset", "status", "product", "type", "seed", "file")
    for a in assets:
        table.add_row(a.id, a.status, a.variant.product_id, a.variant.asset_type, str(a.seed), a.uri or "")
    console.print(table)
    console.print(f"{len(assets)} waiting")


def _decide(decision: str, asset_ids: list[str], every: bool, campaign: str | None,
            run_id: str | None, note: str, reviewer: str | None) -> None:
    catalog = _catalog()
    if every:
        asset_ids = [a.id for a in reviews.waiting(catalog, campaign, run_id)]
    if not asset_ids:
        err.print("Nothing to decide: give asset ids, or --all with --campaign/--run")
        raise typer.Exit(1)
    who = reviewer or local_user()
    failed = 0
    for asset_id in asset_ids:
        try:
            reviews.decide(catalog, asset_id, decision, who, note)
            console.print(f"{decision}d {asset_id} as {who}")
        except DarkroomError as exc:
            err.print(str(exc), style="red")
            failed += 1
    if failed:
        raise typer.Exit(1)


@review_app.command("approve")
def review_approve(
    asset_ids: Annotated[list[str] | None, typer.Argument()] = None,
    every: Annotated[bool, typer.Option(
        "--all", help="Every waiting asset (narrow with --campaign/--run)")] = False,
    campaign: Annotated[str | None, typer.Option()] = None,
    run_id: Annotated[str | None, typer.Option("--run")] = None,
    note: Annotated[str, typer.Option()] = "",
    reviewer: Annotated[str | None, typer.Option(help="Defaults to the local user")] = None,
) -> None:
    """Approve assets."""
    _decide("approve", asset_ids or [], every, campaign, run_id, note, reviewer)


@review_app.command("reject")
def review_reject(
    asset_ids: Annotated[list[str] | None, typer.Argument()] = None,
    every: Annotated[bool, typer.Option("--all")] = False,
    campaign: Annotated[str | None, typer.Option()] = None,
    run_id: Annotated[str | None, typer.Option("--run")] = None,
    note: Annotated[str, typer.Option()] = "",
    reviewer: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Reject assets."""
    _decide("reject", asset_ids or [], every, campaign, run_id, note, reviewer)


@review_app.command("show")
def review_show(
    asset_id: Annotated[str, typer.Argument(help="Asset id (from `darkroom review list`)")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One asset: prompt, seed, model, parameters, QA, and every decision (the audit log)."""
    rec = reviews.show(_catalog(), asset_id)
    if as_json:
        print(json.dumps(rec, indent=2, default=str))
        return
    m, p = rec["model"], rec["params"]
    lines = [
        ("asset", f"{rec['asset_id']} v{rec['version']} ({rec['status']})"),
        ("run", f"{rec['dag_id']} / {rec['run_id']}"),
        ("product", f"{rec['product_id']} {rec['asset_type']}"),
        ("prompt", rec["prompt"]), ("negative", rec["negative_prompt"]), ("seed", rec["seed"]),
        ("model", f"{m['name']}@{m['version']}"),
        ("params", ", ".join(f"{k}={v}" for k, v in sorted(p.items()))),
        ("QA", ", ".join(f"{q['check']}={'ok' if q['passed'] else 'FAIL'}" for q in rec["qa"])),
        ("file", rec["uri"]),
    ]
    for name, value in lines:
        console.print(f"  {name:<9} {value}", soft_wrap=True, highlight=False, markup=False)
    for r in rec["reviews"]:
        console.print(f"  {'decision':<9} {r['decision']} by {r['reviewer']} at {r['at']}"
                      + (f": {r['note']}" if r["note"] else ""), highlight=False, markup=False)
    if not rec["reviews"]:
        console.print(f"  {'decision':<9} none yet", highlight=False)


# -- assets -----------------------------------------------------------------------------

@assets_app.command("search")
def assets_search(
    campaign: Annotated[str | None, typer.Option()] = None,
    product: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option(help="e.g. published, rejected, qa_failed")] = None,
    model_profile: Annotated[str | None, typer.Option(
        help="Model name: a registry profile, or e.g. tiny-sd")] = None,
    model_version: Annotated[str | None, typer.Option()] = None,
    lora: Annotated[str | None, typer.Option(help="LoRA NAME or NAME@VERSION")] = None,
    template_version: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option(help="Created on/after: 2026-01-01 or ISO time")] = None,
    until: Annotated[str | None, typer.Option(help="Created before the end of: 2026-01-31")] = None,
    qa_failed: Annotated[str | None, typer.Option(
        help="Failed this QA check (a check name, or blur / blank)")] = None,
    reviewer: Annotated[str | None, typer.Option(help="Reviewed by")] = None,
    run_id: Annotated[str | None, typer.Option("--run")] = None,
    limit: Annotated[int | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Assets with their lineage: prompt, seed, model, params, QA, review, URIs."""
    try:
        rows = lineage.search(_catalog(), campaign=campaign, product=product, status=status,
                      model_profile=model_profile, model_version=model_version, lora=lora,
                      template_version=template_version, since=since, until=until,
                      qa_failed=qa_failed, reviewer=reviewer, run_id=run_id, limit=limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table("asset", "v", "campaign", "product", "status", "model", "seed", "approved by")
    for r in rows:
        table.add_row(r["asset_id"], str(r["version"]), r["campaign"], r["product_id"], r["status"],
                      f"{r['model']['name']}@{r['model']['version']}", str(r["seed"]),
                      (r["review"] or {}).get("reviewer", ""))
    console.print(table)
    console.print(f"{len(rows)} assets")


@assets_app.command("regenerate")
def assets_regenerate(
    asset_id: str,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
) -> None:
    """Regenerate one asset from its recorded parameters and compare checksums."""
    with console.status(f"Regenerating {asset_id}"):
        rep = regenerate_asset(asset_id, Settings.from_env(), device=device)
    console.print(f"original     {rep.original_uri}  sha256 {rep.original_sha256}")
    console.print(f"regenerated  {rep.new_uri}  sha256 {rep.new_sha256}")
    if rep.identical:
        console.print(Text.assemble(("identical", "green"), ": the recorded parameters reproduce the asset"))
    else:
        err.print(Text.assemble(("different", "red"),
                                ": same parameters, other pixels (device, dtype or library versions?)"))
        raise typer.Exit(1)


@app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="An image: a published file, or a copy found anywhere")],
    as_json: Annotated[bool, typer.Option("--json", help="The whole result as JSON, for scripts")] = False,
) -> None:
    """Where FILE came from: origin, generation, checks, approval, publications, how to
    regenerate it, and plainly what could not be verified. Exit 1 when it cannot be traced."""
    from darkroom.stages.verify import render_text  # the catalog, pandas: only this command
    from darkroom.stages.verify import verify as trace

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc}") from None
    result = trace(data, _catalog(), Settings.from_env(), file=str(file))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        console.print(render_text(result), soft_wrap=True, highlight=False, markup=False)
    if result.match is None:
        raise typer.Exit(1)


# -- models, spec -------------------------------------------------------------------------

@models_app.command("train-demo")
def models_train_demo(
    steps: Annotated[int | None, typer.Option(
        help="Generator training steps; the other phases scale with it (default: the full recipe)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder to write (default: the demo model's, "
                   "include/models/darkroom-demo or $DARKROOM_DEMO_MODEL)")] = None,
    threads: Annotated[int, typer.Option(help="torch threads (0: one per core)")] = 0,
    resume_from: Annotated[Path | None, typer.Option(
        help="A run that stopped after its classifier: keep its pipeline and classifier, "
             "train only the style LoRA, then measure and write the card")] = None,
    lora_only: Annotated[bool, typer.Option(
        "--lora-only", help="Keep the model in --out as it is: train only its style LoRA again, "
        "redraw lora/samples.png and update training.json's lora part")] = False,
) -> None:
    """Train the demo text-to-image model, its prompt-match classifier and a style LoRA from
    nothing, on procedural renders (about 30 minutes on 2 CPU cores)."""
    from darkroom.devtools.demo.recipe import run_cli  # torch and diffusers

    out = out or Settings.from_env().demo_model_dir
    run_cli(out, steps=steps, seed=seed, threads=threads, console=console, resume_from=resume_from,
            lora_only=lora_only)


@models_app.command("build-tiny")
def models_build_tiny(
    path: Annotated[Path | None, typer.Argument(
        help="Folder to write (default: $DARKROOM_HOME/models/tiny-sd, or tiny-ARCH)")] = None,
    arch: Annotated[str, typer.Option(help="Model family: sd | sdxl | sd3 | flux")] = "sd",
    seed: Annotated[int, typer.Option(
        help="Seed of the random weights: another seed is another model (another checksum), "
             "e.g. a second version to register and try")] = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even if it exists")] = False,
) -> None:
    """Build an offline tiny random-weight pipeline (Stable Diffusion by default)."""
    from darkroom.devtools.tiny_model import ARCHS, build_tiny_pipeline  # torch and diffusers

    if arch not in ARCHS:
        raise typer.BadParameter(f"--arch {arch!r} is unknown; use one of {', '.join(ARCHS)}")
    settings = Settings.from_env()
    # `generation.model: tiny` means the sd one ($DARKROOM_TINY_MODEL); the other families
    # are pointed at by folder, so they live beside it under their own names.
    path = path or (settings.tiny_model_dir if arch == "sd" else settings.home / "models" / f"tiny-{arch}")
    if (path / "model_index.json").is_file() and not force:
        console.print(f"Tiny model already at {path}")
        return
    with console.status(f"Building the tiny {arch} pipeline at {path}"):
        build_tiny_pipeline(path, arch=arch, seed=seed)
    console.print(f"Built the tiny {arch} pipeline at {path} (seed {seed}; random weights: it draws noise)",
                  highlight=False, markup=False)


def _lora_list(values: list[str] | None):
    return [Lora.parse(v) for v in values or []]


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Profile name, e.g. product_sd")],
    base: Annotated[str, typer.Argument(help="Base model: a local pipeline folder or a hub id")],
    revision: Annotated[str | None, typer.Option(help="Hub revision (commit) of the base model")] = None,
    checksum: Annotated[str | None, typer.Option(
        help="sha256 of the weights (computed for a local folder)")] = None,
    lora: Annotated[list[str] | None, typer.Option(
        help="NAME@VERSION[:WEIGHT][=PATH]; repeat for several")] = None,
    scheduler: Annotated[str | None, typer.Option()] = None,
    steps: Annotated[int | None, typer.Option(help="Default steps")] = None,
    guidance: Annotated[float | None, typer.Option(help="Default guidance")] = None,
    alias: Annotated[str | None, typer.Option(help="Also point this alias at the new version")] = None,
    description: Annotated[str, typer.Option()] = "",
) -> None:
    """Register a new version of a model profile in the MLflow Model Registry."""
    from darkroom.generation import profiles  # MLflow: seconds to import

    settings = Settings.from_env()
    defaults = {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}
    rp = profiles.register(settings, name, base, revision=revision, checksum=checksum,
                           loras=_lora_list(lora), scheduler=scheduler, defaults=defaults,
                           description=description)
    console.print(f"Registered {rp.uri} (base {rp.profile.base}, checksum {rp.profile.checksum or '-'}) "
                  f"in {settings.mlflow_tracking_uri}")
    if alias:
        profiles.promote(settings, name, rp.version, alias)
        console.print(f"models:/{name}@{alias} -> version {rp.version}")


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    alias: Annotated[str, typer.Option(help="champion or challenger (or any alias)")] = "champion",
) -> None:
    """Point an alias (default champion) at a version; the previous one is kept in its history."""
    from darkroom.generation import profiles  # MLflow: seconds to import

    previous = profiles.promote(Settings.from_env(), name, version, alias)
    console.print(f"models:/{name}@{alias} -> version {version} (was {previous or 'unset'})")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument()],
    alias: Annotated[str, typer.Option()] = "champion",
) -> None:
    """Move an alias back to the version it pointed at before its last promotion."""
    from darkroom.generation import profiles  # MLflow: seconds to import

    version = profiles.rollback(Settings.from_env(), name, alias)
    console.print(f"models:/{name}@{alias} -> version {version} (rolled back)")


@models_app.command("list")
def models_list(name: Annotated[str, typer.Argument()]) -> None:
    """A profile's versions, aliases and alias history, as JSON."""
    from darkroom.generation import profiles  # MLflow: seconds to import

    print(json.dumps(profiles.describe(Settings.from_env(), name), indent=2))


@spec_app.command("check")
def spec_check(files: list[Path]) -> None:
    """Validate spec files; print every problem."""
    bad = 0
    for f in files:
        try:
            loaded = load_spec(f)
            console.print(Text.assemble(("ok", "green"), f" {f} -> {loaded.spec.dag_id}"))
        except DarkroomError as exc:
            err.print(str(exc), style="red", soft_wrap=True)
            bad += 1
    if bad:
        raise typer.Exit(1)


@spec_app.command("schema")
def spec_schema(out: Annotated[Path | None, typer.Argument()] = None) -> None:
    """Write the campaign spec's JSON Schema (stdout without a path)."""
    text = json.dumps(json_schema(), indent=2) + "\n"
    if out:
        out.write_text(text)
        console.print(f"Wrote {out}")
    else:
        print(text, end="")


def local_stack_env(keep_paused: bool = False) -> dict[str, str]:
    """What `darkroom up` sets for its Airflow, unless the environment already does: campaign
    DAGs run as soon as they are parsed (Airflow creates DAGs paused, and a triggered run of a
    paused DAG stays queued), LocalExecutor starts one worker process per core this process
    may use, not Airflow's 32, and the DAG processor prints its stats table every ten minutes,
    not every 30 seconds (it was the bulk of `make up`'s output)."""
    from darkroom.parallel import default_workers

    return {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(keep_paused),
            "AIRFLOW__CORE__PARALLELISM": str(max(2, default_workers())),
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600"}


@app.command("up")
def up(
    airflow_port: Annotated[int, typer.Option()] = 8080,
    mlflow_port: Annotated[int, typer.Option()] = 5000,
    host: Annotated[str, typer.Option(
        help="Bind address; 0.0.0.0 exposes the UIs to the network")] = "127.0.0.1",
    keep_paused: Annotated[bool, typer.Option(
        help="Leave campaign DAGs paused (Airflow's default): runs start once unpaused")] = False,
) -> None:
    """Airflow UI (with the review gallery) and MLflow UI on this machine, until Ctrl-C.

    Campaign DAGs are unpaused (those made earlier, by `darkroom run`, too), so schedules,
    REST and UI triggers start runs; ``--keep-paused`` leaves them as Airflow made them."""
    settings = Settings.from_env()
    apply_airflow_env(settings)
    for key, value in local_stack_env(keep_paused).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("AIRFLOW__API__HOST", host)
    os.environ.setdefault("AIRFLOW__API__PORT", str(airflow_port))
    os.environ.setdefault("AIRFLOW__API__BASE_URL", f"http://{host}:{airflow_port}")
    bin_dir = Path(sys.executable).parent
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"  # standalone needs `airflow`
    settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    from darkroom_operators.local_run import migrate_airflow_db  # before the processes share the DB

    migrate_airflow_db()
    if not keep_paused:
        unpause_campaigns(bin_dir)
    procs = [
        subprocess.Popen([str(bin_dir / "mlflow"), "server", "--host", host, "--port", str(mlflow_port),
                          "--backend-store-uri", settings.mlflow_tracking_uri,
                          "--artifacts-destination", settings.mlflow_artifacts_dir.as_uri()],
                         start_new_session=True),
        # Its own process group: standalone's scheduler, triggerer and api-server stop with it.
        subprocess.Popen([str(bin_dir / "airflow"), "standalone"], start_new_session=True),
    ]
    password_file = Path(os.environ["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    console.print(f"Airflow UI: http://{host}:{airflow_port}  (user admin, password in {password_file})")
    console.print(f"MLflow UI:  http://{host}:{mlflow_port}")
    console.print("Ctrl-C stops both.")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill`, a service manager: same as Ctrl-C
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def unpause_campaigns(bin_dir: Path) -> None:
    """Unpause the campaign DAGs Airflow already knows (the paused-at-creation setting only
    covers new ones: a `darkroom run` before `make up` made its DAG paused). On a fresh
    Airflow home there is nothing to unpause yet, and the command's failure says only that."""
    subprocess.run([str(bin_dir / "airflow"), "dags", "unpause", "--treat-dag-id-as-regex", "--yes",
                    f"^{DAG_PREFIX}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, timeout=300)


def _write_result(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


@app.command("bench")
def bench(
    stage: Annotated[str, typer.Argument(
        help="generate | qa | plan | provenance | post | demo-model")] = "generate",
    images: Annotated[int, typer.Option(help="Images to generate")] = 16,
    batch_size: Annotated[list[int] | None, typer.Option(help="Batch sizes to compare")] = None,
    size: Annotated[int | None, typer.Option(
        help="Width and height (default: 64 for tiny, the model's native 512 / 1024 for sd15 / sdxl)")] \
        = None,
    steps: Annotated[int, typer.Option()] = 4,
    arch: Annotated[str, typer.Option(
        help="generate: tiny (offline test model) | sd15 | sdxl (the real architectures with "
             "random weights, built once into $DARKROOM_HOME/models/random-ARCH)")] = "tiny",
    out: Annotated[Path | None, typer.Option(
        help="Results file (JSON); default docs/bench/STAGE.json (generate-ARCH.json for sd15/sdxl)")] \
        = None,
    variants: Annotated[int, typer.Option(help="plan: variants to plan")] = 10_000,
    catalog_url: Annotated[list[str] | None, typer.Option(
        help="plan: catalog URL(s) to plan into (default: a fresh SQLite file)")] = None,
) -> None:
    """Measure the generate stage (images/s on this machine's device), qa (CPU ms per
    1024x1024 image for the default checks plus one JPEG derivative), plan (seconds to
    validate, expand and store N variants) or provenance (CPU ms per 1000x1000 derivative for
    XMP, signing and the watermark; the share of published files `verify` traces after
    stripping, re-saving and cropping), post (CPU ms per 1024x1024 image of each
    post-processing model step: Real-ESRGAN, background removal, the no_text check) or
    demo-model (how often the demo model's pictures, and the random tiny model's, read back as
    their prompts asked)."""

    if stage == "demo-model":  # the demo model read back by its classifier, beside the random tiny one
        from darkroom.devtools.demo.bench import run_cli  # torch and diffusers

        run_cli(out or Path("docs/bench/demo_model.json"), console=console)
        return
    if stage not in ("generate", "qa", "plan", "provenance", "post"):
        raise typer.BadParameter(f"unknown stage {stage!r}; benchmarks: generate, qa, plan, provenance, "
                                 "post, demo-model")
    # Full-size results go to their own file: they must not overwrite the tiny baseline.
    name = {"plan": "planning", "generate": "generate" if arch == "tiny" else f"generate-{arch}"}
    out = out or Path(f"docs/bench/{name.get(stage, stage)}.json")
    if stage == "provenance":
        from darkroom.devtools.bench_provenance import bench_provenance, summary_lines  # the stages

        result = bench_provenance(Settings.from_env())
        _write_result(out, result)
        for line in summary_lines(result):
            console.print(line, highlight=False)
        console.print(f"Wrote {out}")
        return
    if stage == "post":
        from darkroom.devtools.bench_post import bench_post, summary_lines  # the post models

        result = bench_post(images=min(images, 4))
        _write_result(out, result)
        for line in summary_lines(result):
            console.print(line, highlight=False)
        console.print(f"Wrote {out}")
        return
    if stage == "plan":
        from darkroom.devtools.bench_planning import bench_planning  # Great Expectations

        urls = {u.split(":", 1)[0].split("+")[0]: u for u in catalog_url or []} or {"sqlite": None}
        result = bench_planning(variants=variants, catalog_urls=urls)
        _write_result(out, result)
        for r in result["runs"]:
            console.print(f"{r['catalog']}: {r['variants']} variants planned in {r['total_s']} s "
                          f"({r['variants_per_s']}/s), {r['mapped_tasks']} mapped tasks, "
                          f"peak RSS {r['peak_rss_mb']} MB")
        console.print(f"Wrote {out}")
        return
    if stage == "qa":
        from darkroom.devtools.bench_qa import bench_qa  # numpy, the QA engines

        result = bench_qa(images=images)
        _write_result(out, result)
        cpu, par = result["cpu_ms_per_image"], result["parallel"]
        console.print(f"QA + JPEG derivative: {cpu['total_median']} CPU ms per 1024x1024 image "
                      f"(checks {cpu['qa_checks_median']}, derivative {cpu['jpeg_derivative_median']}); "
                      f"{par['images_per_s']} images/s on {par['workers']} workers")
        console.print(f"Wrote {out}")
        return
    from darkroom.devtools.bench import bench_generate  # torch and diffusers
    from darkroom.devtools.full_size import ARCHS as FULL_SIZE  # torch and diffusers
    from darkroom.devtools.full_size import NATIVE_SIZE, ensure_random_pipeline

    if arch not in ("tiny", *FULL_SIZE):
        raise typer.BadParameter(f"--arch {arch!r} is unknown; use tiny, {', '.join(FULL_SIZE)}")
    settings = Settings.from_env()
    model = "tiny"
    if arch != "tiny":
        target = settings.home / "models" / f"random-{arch}"
        if not (target / "model_index.json").is_file():
            console.print(f"Building the full-size {arch} architecture with random weights at {target} "
                          "(once; several GB)")
        model = str(ensure_random_pipeline(arch, settings.home / "models"))
    result = bench_generate(settings, images=images, batch_sizes=batch_size or [1, 4],
                            size=size or NATIVE_SIZE.get(arch, 64), steps=steps, model=model)
    result["arch"] = arch
    _write_result(out, result)
    for r in result["runs"]:
        console.print(f"batch {r['batch_size']:>3}: bare loop {r['bare_images_per_s']:.2f} images/s, "
                      f"operator path {r['operator_images_per_s']:.2f} images/s "
                      f"({r['operator_vs_bare']:.2f}x)")
    console.print(f"Wrote {out}")


@app.command("serve-model")
def serve_model(
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it to the network")] \
        = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8765,
    model: Annotated[list[str] | None, typer.Option(
        help="Model to load at start (a folder, hub id, 'tiny' or models:/...); repeatable")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    batch_window_ms: Annotated[float, typer.Option(
        help="How long to collect concurrent requests into one forward pass")] = 20.0,
    max_batch: Annotated[int, typer.Option(help="Images per forward pass, at most")] = 8,
) -> None:
    """Serve models over HTTP for `generation.backend: http` (warm across tasks, batched)."""
    from darkroom.generation.server import serve  # torch, diffusers and uvicorn

    serve(host, port, models=model or [], device=device, window_s=batch_window_ms / 1000,
          max_batch=max_batch)


def main() -> None:
    try:
        app()
    except DarkroomError as exc:
        err.print(str(exc), style="red", soft_wrap=True)
        sys.exit(2)
    finally:
        # The interpreter's last garbage collection walks every object Airflow and the stages
        # left behind: 5 s or more after `darkroom run` (measured), also after a SIGTERM.
        # The process ends here, so that walk is skipped.
        gc.freeze()


if __name__ == "__main__":
    main()
