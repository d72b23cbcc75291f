"""How asset metadata shows tables in the Dagster UI."""

import dagster as dg
import pandas as pd


def markdown_table(frame: pd.DataFrame, rows: int = 20, empty: str = "_nothing_") -> dg.MetadataValue:
    """The first `rows` rows of `frame` as a markdown table (the UI's "Show Markdown")."""
    return dg.MetadataValue.md(frame.head(rows).to_markdown(index=False) if len(frame) else empty)
