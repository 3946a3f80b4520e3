"""GenerateImagesOperator: the GPU stage. One mapped instance generates one batch: its first
drawings (task ``generate``) or the regenerations QA planned (``regenerate_N``)."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseOperator, Context
from darkroom_operators.failures import fail_fast
from darkroom_operators.hooks import CATALOG_CONN_ID, DarkroomHook


class GenerateImagesOperator(BaseOperator):
    """Generate the images of one batch of a campaign run with a diffusers pipeline.

    The pipeline is loaded with ``from_pretrained`` once per worker process and reused by
    every batch that process runs. Each image is written (PNG with provenance) and recorded
    in the catalog as it finishes, so a retry regenerates only what is missing; what was
    planned and has no image yet is drawn, so the same operator renders QA's regenerations.
    The task records the device, dtype, seconds and peak memory it ran with.

    :param spec_path: path of the campaign spec file. (templated)
    :param batch: the batch number to generate, from ``expand_prompts``. (templated)
    :param catalog_conn_id: Airflow connection of the catalog, if not the environment's.
    """

    template_fields: Sequence[str] = ("spec_path", "batch")
    ui_color = "#2d2a3e"
    ui_fgcolor = "#ffffff"

    def __init__(self, *, spec_path: str, batch: int, catalog_conn_id: str = CATALOG_CONN_ID,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec_path = spec_path
        self.batch = batch
        self.catalog_conn_id = catalog_conn_id

    def execute(self, context: Context) -> int:
        from darkroom.stages import generate  # the catalog and the engines: not at DAG parse time

        with fail_fast():  # a model version that does not exist stays missing on every retry
            ctx = DarkroomHook(self.catalog_conn_id).run_context(self.spec_path, context)
            counts = generate.run(ctx, int(self.batch))
        self.log.info("Batch %s done: %s", self.batch, counts)
        return int(self.batch)
