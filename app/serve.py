"""``curate app``'s server process: the libraries the pages use are imported before Streamlit starts, so
that the first visitor does not wait for them (polars, DuckDB, pyarrow, pandas, numpy, scikit-learn's
kappa, the comparison code, the pages); Streamlit's lookups of this machine's addresses are switched off
(one asks an outside service, checkip.amazonaws.com, for the public IP); then Streamlit's own command line
runs with the arguments given.

    python -m app.serve run app/main.py --server.address 127.0.0.1 ... -- --workspace PATH

The access token, when there is one, comes in the environment (``FTW_APP_TOKEN``), never on the command
line, where every user of the machine could read it (``ps``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    """Import what the pages need, switch off Streamlit's address lookups, then run Streamlit's command line
    with this process's arguments; returns its exit code."""
    import duckdb  # noqa: F401
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import polars  # noqa: F401
    import pyarrow  # noqa: F401
    import sklearn.metrics  # noqa: F401
    from streamlit.web import cli

    import app.views  # noqa: F401  (the pages, their queries and charts)
    import evalsuite.compare  # noqa: F401

    no_address_lookups()
    sys.argv = ["streamlit", *sys.argv[1:]]
    return cli.main()


def no_address_lookups() -> None:
    """Streamlit, bound to every interface and headless, prints this machine's public address, which it
    asks of checkip.amazonaws.com, and its LAN address, found by pointing a UDP socket at 8.8.8.8; both also
    serve as fallbacks in its check of a websocket's origin, where a same-origin page (the app's own) needs
    neither. Both lookups answer "unknown" from here on, so the server contacts nothing outside and prints
    no External or Network URL (``curate app --expose`` prints the URL to open itself)."""
    from streamlit import net_util

    net_util.get_external_ip = lambda: None
    net_util.get_internal_ip = lambda: None


def workspace_problem(path: str | Path) -> str | None:
    """:func:`curate.workspace.workspace_problem` (kept here for the app and its callers)."""
    from curate.workspace import workspace_problem as problem

    return problem(path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; a race with another process is possible)."""
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


def start_app(workspace: str | Path, log: str | Path, *, args: Sequence[str] = (),
              env: Mapping[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`curate app` on ``workspace`` at a free port, as a child process writing to ``log``; returns it and
    its loopback URL once it answers (for tests and benchmarks; stop it with ``terminate()``). ``args`` go
    to `curate app` (``--host 0.0.0.0 --expose``); ``env`` replaces the child's environment (a token in
    ``FTW_APP_TOKEN``)."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "app", "--workspace", str(workspace), "--port", str(port), *args],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=None if env is None else dict(env))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, Path(log))
    return proc, url


if __name__ == "__main__":
    raise SystemExit(main())
