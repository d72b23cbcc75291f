"""How asset metadata shows tables in the Dagster UI."""

import math
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

TABLE_ROWS = 20


def _column_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def _cell(value: Any, kind: str) -> str | int | float | bool | None:
    """A cell as TableRecord takes it: NaN/None as empty, numpy scalars as Python ones, the rest as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if kind in ("int", "float", "bool"):
        return value
    if isinstance(value, (list, tuple, dict)):
        return ", ".join(map(str, value)) if not isinstance(value, dict) else ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def table(frame: pd.DataFrame, rows: int = TABLE_ROWS, descriptions: dict[str, str] | None = None) -> dg.MetadataValue:
    """The first `rows` rows of `frame` as a real table in the UI (columns typed from the frame's dtypes, shown
    without "Show Markdown"); put the counts beside it as plain metadata entries. `descriptions` (column: text)
    show under "Show schema": there a short column name can say what it stands for."""
    kinds = {str(c): _column_type(frame[c]) for c in frame.columns}
    records = [
        dg.TableRecord({str(c): _cell(v, kinds[str(c)]) for c, v in zip(frame.columns, values)})
        for values in frame.head(rows).itertuples(index=False, name=None)
    ]
    about = descriptions or {}
    return dg.MetadataValue.table(
        records=records,
        schema=dg.TableSchema(columns=[dg.TableColumn(c, kind, description=about.get(c)) for c, kind in kinds.items()]),
    )
