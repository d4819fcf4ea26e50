"""The review app: `curate app --workspace PATH` (binds 127.0.0.1). Pages: runs, data browser, labeling,
eval review; every page reads and writes the same DuckDB workspace through app.queries.

The workspace path comes from ``--workspace`` after ``--`` on the streamlit command line, or FTW_WORKSPACE.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import pages  # noqa: E402


def workspace_path() -> str | None:
    args = sys.argv[1:]
    if "--workspace" in args and args.index("--workspace") + 1 < len(args):
        return args[args.index("--workspace") + 1]
    return os.environ.get("FTW_WORKSPACE")


st.set_page_config(page_title="finetune-workbench review", layout="wide")
path = workspace_path()
if not path or not Path(path).is_file():
    st.error(f"no workspace at {path!r}: start the app with `curate app --workspace PATH`")
    st.stop()


@st.cache_resource
def _migrate(p: str) -> None:
    """Create the app's tables (labels, preferences) in a workspace made before they existed."""
    from app.queries import open_workspace

    with open_workspace(p):
        pass


_migrate(path)
page = st.sidebar.radio("page", list(pages.PAGES), key="page")
st.sidebar.caption(f"workspace: {path}")
pages.PAGES[page](path)
