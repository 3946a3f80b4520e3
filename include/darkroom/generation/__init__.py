"""Image generation: request and result types, model references and their resolution, model
profiles in the MLflow registry, the backends (local diffusers, the model server, Stability
AI), routing rules, and what differs between model families.

Only :mod:`darkroom.generation.local` (and the model server built on it) imports torch and
diffusers; everything else here is light enough for the DAG factory and the CLI.
"""

import logging


class _NoFallbackNotice(logging.Filter):
    """transformers' "requires torchvision ... falling back to the PIL processor" notice: the
    PIL processors are the ones we use; nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


# Here, not in .local: diffusers' own import emits the notice (through transformers' stderr
# handler, which a task log files as an error), before any code after local's imports runs.
# A logger's filter sees only its own records, so it goes on the notice's own logger.
logging.getLogger("transformers.utils.import_utils").addFilter(_NoFallbackNotice())
