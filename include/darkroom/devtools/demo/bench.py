"""``darkroom bench demo-model``: do the demo model's pictures show what their prompts ask?

Prompts are the example campaigns' own: their specs' templates rendered over their product
files by the real prompt expansion (``render_variants``), with more seeds, plus every
spring product re-coloured in three other catalogue colours (the same template, a changed
``colour`` column), so the score is not one colour per product learnt by heart. Pictures come
from the real local backend (``resolve_model`` + ``LocalDiffusersBackend``), at demo_tiles'
scheduler / steps / guidance (what ``make demo`` draws with) and at the model card's
recommended ones (summer_social's own are the tiny model's: 3 steps). The
prompt-match classifier reads each picture back. The random tiny model runs the same prompts:
it must land near chance, or the check cannot tell pictures from noise.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from darkroom.config import PROJECT_ROOT, Settings
from darkroom.devtools.demo import catalogue as cat
from darkroom.devtools.demo.generator import RECOMMENDED

# demo_tiles is the spring catalogue with spring_tiles' prompts, on the demo model's settings.
CAMPAIGNS = ("demo_tiles", "summer_social")
RECOLOURS_PER_PRODUCT = 3
BATCH = 8


@dataclass(frozen=True)
class Case:
    campaign: str
    kind: str  # catalogue | recoloured
    prompt: str
    negative: str
    seed: int
    settings: dict  # the campaign's scheduler, steps, guidance


def cases(campaigns_dir: Path, seeds: int = 3) -> list[Case]:
    """The benchmark's prompts: each campaign's variants over ``seeds`` seed offsets, and the
    spring products re-coloured."""
    from darkroom.prompts import render_variants
    from darkroom.spec import load_spec

    out: list[Case] = []
    rng = np.random.default_rng(19)
    for name in CAMPAIGNS:
        loaded = load_spec(campaigns_dir / f"{name}.yaml")
        g = loaded.spec.generation
        settings = {"scheduler": g.scheduler, "steps": g.steps, "guidance": g.guidance}
        with loaded.resolve(loaded.spec.products.source).open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        batches = [("catalogue", rows, seeds)]
        if "colour" in rows[0]:
            recoloured = []
            for row in rows:
                others = [c for c in cat.CATALOGUE_COLOURS if c != row["colour"]]
                for colour in rng.choice(others, RECOLOURS_PER_PRODUCT, replace=False):
                    recoloured.append({**row, "colour": str(colour)})
            batches.append(("recoloured", recoloured, 1))
        for kind, product_rows, n_seeds in batches:
            for k in range(n_seeds):
                for v in render_variants(loaded, product_rows, seed_offset=k * g.seeds_per_variant):
                    out.append(Case(name, kind, v.prompt, v.negative_prompt, v.seed, settings))
    return out


def _generate(backend, batch: list[Case], settings: dict) -> tuple[list, float]:
    from darkroom.generation.types import Request

    requests = [Request(f"b{i}", c.prompt, c.negative, c.seed, 64, 64, settings["steps"],
                        settings["guidance"], settings["scheduler"]) for i, c in enumerate(batch)]
    started = time.perf_counter()
    results = backend.generate(requests, pass_size=BATCH)
    return [r.image for r in results], time.perf_counter() - started


def score(backend, matcher, all_cases: list[Case], settings: dict | None) -> dict:
    """Generate every case (at its campaign's settings, or at ``settings``) and read it back."""
    rows, seconds = [], 0.0
    _generate(backend, all_cases[:BATCH], settings or all_cases[0].settings)  # warm-up: load, allocate
    for i in range(0, len(all_cases), BATCH):
        batch = all_cases[i:i + BATCH]
        groups: dict[tuple, list[Case]] = {}
        for c in batch:  # one forward pass per campaign's settings
            groups.setdefault(tuple(sorted((settings or c.settings).items())), []).append(c)
        for key, group in groups.items():
            images, sec = _generate(backend, group, dict(key))
            seconds += sec
            for c, m in zip(group, matcher.match_many([c.prompt for c in group], images), strict=True):
                rows.append((c, m))
    return {"images": len(rows), "images_per_s": round(len(rows) / seconds, 2),
            **_shares([m for _, m in rows]),
            "by_campaign": {name: _shares([m for c, m in rows if c.campaign == name]) for name in CAMPAIGNS},
            "by_kind": {kind: _shares([m for c, m in rows if c.kind == kind])
                        for kind in ("catalogue", "recoloured")},
            "settings": settings or {c.campaign: c.settings for c, _ in rows}}


def _shares(matches) -> dict:
    if not matches:
        return {}
    asked_type = [m for m in matches if m.asked["type"]]
    asked_colour = [m for m in matches if m.asked["colour"]]
    return {
        "type": round(float(np.mean([m.read["type"][0] == m.asked["type"] for m in asked_type])), 4),
        "colour": round(float(np.mean([m.read["colour"][0] == m.asked["colour"] for m in asked_colour])), 4),
        "both": round(float(np.mean([m.matched for m in matches])), 4),
        "mean_probability": round(float(np.mean([m.probability for m in matches])), 4),
    }


def bench_demo_model(settings: Settings, *, seeds: int = 3) -> dict:
    from darkroom.devtools.demo.recipe import CLASSIFIER_DIR
    from darkroom.devtools.tiny_model import build_tiny_pipeline
    from darkroom.generation.local import LocalDiffusersBackend
    from darkroom.generation.resolve import resolve_model
    from darkroom.prompt_match import PromptMatcher
    from darkroom.spec import load_spec

    demo = resolve_model("demo", None, settings)
    g = load_spec(settings.campaigns_dir / "demo_tiles.yaml").spec.generation
    demo_tiles = {"scheduler": g.scheduler, "steps": g.steps, "guidance": g.guidance}
    matcher = PromptMatcher(Path(demo.location) / CLASSIFIER_DIR)
    all_cases = cases(settings.campaigns_dir, seeds)
    n_types, n_colours = len(matcher.labels["type"]), len(matcher.labels["colour"])
    result: dict = {
        "stage": "demo-model", "at": datetime.now(UTC).isoformat(timespec="seconds"), "commit": _commit(),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "prompts": {"total": len(all_cases),
                    **{k: sum(c.kind == k for c in all_cases) for k in ("catalogue", "recoloured")},
                    "examples": [all_cases[0].prompt,
                                 next(c.prompt for c in all_cases if c.campaign == CAMPAIGNS[1])]},
        "chance": {"type": round(1 / n_types, 4), "colour": round(1 / n_colours, 4),
                   "both": round(1 / (n_types * n_colours), 4),
                   "labels": {"type": n_types, "colour": n_colours}},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tiny = resolve_model(str(build_tiny_pipeline(Path(tmp) / "tiny-sd")), None, settings)
        for name, ref in (("demo", demo), ("tiny", tiny)):
            backend = LocalDiffusersBackend(ref, "cpu")
            result["models"][name] = {
                "model": ref.name, "version": ref.version,
                "demo_tiles_settings": score(backend, matcher, all_cases, demo_tiles),
                "recommended_settings": score(backend, matcher, all_cases, dict(RECOMMENDED)),
            }
    training = Path(demo.location) / "training.json"
    if training.is_file():
        t = json.loads(training.read_text("utf-8"))
        result["training"] = {"wall_s": t["wall_s"], "trained_at": t["trained_at"],
                              "steps": t["recipe"]["steps"],
                              "load_avg": [r["load_avg_1m"] for r in t["phases"].values()],
                              "classifier_heldout": t["classifier_heldout"]}
    return result


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_cli(out: Path, *, console) -> dict:
    with console.status("Generating and reading back the campaigns' prompts (demo and tiny models)"):
        result = bench_demo_model(Settings.from_env())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    for name, m in result["models"].items():
        for key in ("demo_tiles_settings", "recommended_settings"):
            r = m[key]
            console.print(f"{name:>5} {key:<21}: type {r['type']:.0%}, colour {r['colour']:.0%}, both "
                          f"{r['both']:.0%} of {r['images']} images, {r['images_per_s']} images/s")
    ch = result["chance"]
    console.print(f"chance: type {ch['type']:.0%}, colour {ch['colour']:.0%}, both {ch['both']:.1%}. "
                  f"Wrote {out}")
    return result
