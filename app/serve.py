"""``curate app``'s server process: the libraries the pages use are imported before Streamlit starts, so
that the first visitor does not wait for them (polars, DuckDB, pyarrow, pandas, numpy, scikit-learn's
kappa, the comparison code, the pages); then Streamlit's own command line runs with the arguments given.

    python -m app.serve run app/main.py --server.address 127.0.0.1 ... -- --workspace PATH
"""

from __future__ import annotations

import sys


def main() -> int:
    import duckdb  # noqa: F401
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import polars  # noqa: F401
    import pyarrow  # noqa: F401
    import sklearn.metrics  # noqa: F401
    from streamlit.web import cli

    import app.views  # noqa: F401  (the pages, their queries and charts)
    import evalsuite.compare  # noqa: F401

    sys.argv = ["streamlit", *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
