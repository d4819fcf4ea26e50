"""One module per page; each exposes ``render(workspace_path)``. (Not named `pages/`: Streamlit would take
that folder for its own multipage navigation.)"""

from app.views import browser, eval_review, labeling, runs

PAGES = {"Runs": runs.render, "Data browser": browser.render, "Labeling": labeling.render, "Eval review": eval_review.render}
