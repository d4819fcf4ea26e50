"""The review app: `curate app --workspace PATH` (binds 127.0.0.1). Pages: runs, data browser, labeling,
eval review; every page reads and writes the workspace through app.queries.

The workspace path comes from ``--workspace`` after ``--`` on the streamlit command line, or FTW_WORKSPACE.
When ``FTW_APP_TOKEN`` is set (``curate app --expose`` sets it), a visitor sees a token prompt and nothing
else, not even the workspace's path, until ``?token=`` in the URL or the typed token matches; the session
remembers it.
"""

from __future__ import annotations

import hmac
import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import views  # noqa: E402
from app.render import literal  # noqa: E402
from app.serve import workspace_problem  # noqa: E402

try:
    from curate.workspace import WorkspaceBusy, WorkspaceError
except ImportError:  # a workspace module without them: nothing raises them, nothing to catch
    class WorkspaceBusy(Exception):  # type: ignore[no-redef]
        """Stands in for curate.workspace.WorkspaceBusy."""

    class WorkspaceError(Exception):  # type: ignore[no-redef]
        """Stands in for curate.workspace.WorkspaceError."""

AUTHORIZED = "_ftw_authorized"


def workspace_path() -> str | None:
    """The workspace folder the app serves: the value after ``--workspace`` in the script's arguments, else
    the ``FTW_WORKSPACE`` environment variable; None when neither is given."""
    args = sys.argv[1:]
    if "--workspace" in args and args.index("--workspace") + 1 < len(args):
        return args[args.index("--workspace") + 1]
    return os.environ.get("FTW_WORKSPACE")


def _matches(given: str | None, token: str) -> bool:
    # constant-time: the time a wrong guess takes says nothing about how much of it was right
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def authorized(token: str | None) -> bool:
    """Whether this session may see the workspace: no token configured, or the session showed it once
    (``?token=`` in the URL, or typed into the prompt this draws). Until then the prompt is all the page
    holds; a wrong token says so and nothing more."""
    if not token or st.session_state.get(AUTHORIZED):
        return True
    if _matches(st.query_params.get("token"), token):
        st.session_state[AUTHORIZED] = True
        return True
    st.title("finetune-workbench review")
    typed = st.text_input("access token", type="password", key="_ftw_token",
                          help="printed by `curate app --expose` when it started, or given to it with --token / FTW_APP_TOKEN")
    if typed:
        if _matches(typed, token):
            st.session_state[AUTHORIZED] = True
            del st.session_state["_ftw_token"]
            st.rerun()
        st.error("that token does not match")
    return False


@st.cache_resource(show_spinner=False)
def _checked(p: str) -> bool:
    """Once per server: the path is a workspace (a failure is not cached, so the next page load checks
    again)."""
    problem = workspace_problem(p)
    if problem:
        raise WorkspaceError(problem)
    return True


st.set_page_config(page_title="finetune-workbench review", layout="wide")
if not authorized(os.environ.get("FTW_APP_TOKEN")):
    st.stop()
path = workspace_path()
if not path:
    st.error("no workspace given: start the app with `curate app --workspace PATH`")
    st.stop()
try:
    _checked(path)
except WorkspaceError as e:
    st.error(literal(str(e)))
    st.stop()
# the page is in the URL (?page=Labeling), so a link opens it and a reload stays on it
names = list(views.PAGES)
if "page" not in st.session_state and st.query_params.get("page") in names:
    st.session_state["page"] = st.query_params["page"]
page = st.sidebar.radio("page", names, key="page")
st.query_params["page"] = page
st.sidebar.caption(f"workspace: {literal(path)}")
try:
    views.PAGES[page](path)
except WorkspaceBusy as e:  # a run or another writer holds what this page needs: say so, no traceback
    st.warning(literal(str(e)))
except WorkspaceError as e:  # the workspace went away or changed under the server
    st.error(literal(str(e)))
