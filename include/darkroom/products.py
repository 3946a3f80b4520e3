"""Product data: read the spec's source (CSV or Parquet, local or s3://) into rows."""

from __future__ import annotations

import io
import math
from pathlib import Path

from darkroom.errors import ValidationFailed
from darkroom.spec import LoadedSpec


def load_products_frame(loaded: LoadedSpec, *, s3_client=None):
    import pandas as pd

    src = loaded.product_source
    if src.startswith("s3://"):
        from darkroom.storage import read_uri

        raw: io.BytesIO | Path = io.BytesIO(read_uri(src, s3_client=s3_client))
    else:
        raw = Path(src)
    try:
        if src.lower().endswith(".parquet"):
            return pd.read_parquet(raw)
        # Ids stay text ("00123" is not 123); other columns get pandas' inference.
        return pd.read_csv(raw, dtype={loaded.spec.products.id_column: str})
    except FileNotFoundError:
        raise ValidationFailed(f"{loaded.path}: products.source {src} does not exist") from None
    except Exception as exc:  # pandas' parser errors name the line
        raise ValidationFailed(f"{loaded.path}: products.source {src} could not be read: {exc}") from exc


def frame_to_rows(df) -> list[dict]:
    """Plain Python values (no numpy scalars, NaN -> None), so rows hash and serialize."""
    rows = []
    for rec in df.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            clean[str(k)] = v
        rows.append(clean)
    return rows
