"""``curate app``'s server process: the libraries the pages use are imported before Streamlit starts, so
that the first visitor does not wait for them (polars, DuckDB, pyarrow, pandas, numpy, scikit-learn's
kappa, the comparison code, the pages); then Streamlit's own command line runs with the arguments given.

    python -m app.serve run app/main.py --server.address 127.0.0.1 ... -- --workspace PATH
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Until the Streamlit server at ``url`` answers its health check; raises, with the log's tail, if it
    exits or does not answer in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the app did not come up at {url}: {Path(log).read_text()[-2000:]}")


def start_app(workspace: str | Path, log: str | Path) -> tuple[subprocess.Popen, str]:
    """`curate app` on ``workspace`` at a free loopback port, as a child process writing to ``log``; returns
    it and its URL once it answers (for tests and benchmarks; stop it with ``terminate()``)."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "app", "--workspace", str(workspace), "--port", str(port)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, Path(log))
    return proc, url


if __name__ == "__main__":
    raise SystemExit(main())
