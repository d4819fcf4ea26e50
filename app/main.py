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

from app import views  # noqa: E402


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
# the page is in the URL (?page=Labeling), so a link opens it and a reload stays on it
names = list(views.PAGES)
if "page" not in st.session_state and st.query_params.get("page") in names:
    st.session_state["page"] = st.query_params["page"]
page = st.sidebar.radio("page", names, key="page")
st.query_params["page"] = page
st.sidebar.caption(f"workspace: {path}")
views.PAGES[page](path)
