"""The stages of a campaign run, as plain functions: each module's ``run`` is what one Airflow
task calls, and what a test calls directly.

    validate (validate_inputs) -> plan (expand_prompts)
        -> per batch: generate -> qa [-> generate (regenerate_N) -> qa (qa_N)]* [-> upscale]
                      -> postprocess
        -> track -> approve (await_approval) -> publish

Each reads its work from the catalog, calls an engine, and writes each result to the catalog
as it finishes, so a retried or resumed task repeats nothing. ``context`` holds what they all
receive; ``sequence`` runs them in order in one process; ``reproduce`` makes one asset again.
"""
