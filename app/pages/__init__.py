"""One module per page; each exposes ``render(workspace_path)``."""

from app.pages import browser, eval_review, labeling, runs

PAGES = {"Runs": runs.render, "Data browser": browser.render, "Labeling": labeling.render, "Eval review": eval_review.render}
