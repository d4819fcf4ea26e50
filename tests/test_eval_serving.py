"""`evalsuite run --server`: generation through an OpenAI-compatible server, tested against a real llama.cpp
server on loopback (the `llama_server` fixture: the packaged SmolLM2 GGUF) and a real HTTP proxy in front of
it that can answer 503 (a socket server in a thread, not a mock): the run folder, the response cache (a second
run sends nothing, through a proxy that counts), retries with backoff, failures in one line, the refusals,
progress bars and the timing report."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import free_port, write_jsonl

N = 8  # examples per task


class Proxy(ThreadingHTTPServer):
    """Forwards every request to ``upstream``, except that the first ``fail`` POSTs get ``503``. Counts what
    it answered itself (``failed``) and what it forwarded (``forwarded`` POSTs)."""

    daemon_threads = True

    def __init__(self, upstream: str, fail: int = 0):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.fail_left = upstream.rstrip("/"), fail
        self.failed = self.forwarded = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: Proxy

    def log_message(self, *args) -> None:  # quiet
        pass

    def _forward(self, body: bytes | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        path = self.path.removeprefix("/v1")
        request = urllib.request.Request(self.server.upstream + path, data=body, headers=headers, method=self.command)
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            fail = self.server.fail_left > 0
            if fail:
                self.server.fail_left -= 1
                self.server.failed += 1
            else:
                self.server.forwarded += 1
        if fail:
            payload = b'{"error": "overloaded"}'
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self._forward(body)


@pytest.fixture(scope="module")
def suite_dir(shared_data, tmp_path_factory, llama_server):
    url, key = llama_server
    tmp = tmp_path_factory.mktemp("serving")
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[300:300 + N]
    write_jsonl(tmp / "alpaca.jsonl", alpaca)
    write_jsonl(tmp / "gpt4.jsonl", json.loads((shared_data / "alpaca_gpt4" / "alpaca_en_demo.json").read_text())[:N])
    suite = {
        "name": "served",
        "generation": {"max_new_tokens": 24},
        "server": {"base_url": url, "model": "smollm2", "api_key_env": "FTW_TEST_SERVER_KEY", "concurrency": 4,
                   "backoff_s": 0.05, "cache": "cache"},
        "tasks": [
            {"name": "alpaca", "path": "alpaca.jsonl", "metrics": ["rouge", "bleu"]},
            {"name": "gpt4", "path": "gpt4.jsonl", "metrics": ["chrf", "exact_match_normalized"]},
        ],
    }
    (tmp / "suite.yaml").write_text(yaml.safe_dump(suite))
    retry = {**suite, "server": {**suite["server"], "cache": None}}
    (tmp / "nocache.yaml").write_text(yaml.safe_dump(retry))
    return tmp


@pytest.fixture(scope="module", autouse=True)
def _key(llama_server):
    """The server's API key, where the suite's `api_key_env` points, for every test of this file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTW_TEST_SERVER_KEY", llama_server[1])
        yield


def _cli(*args):
    from evalsuite.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _outputs(folder) -> list[str]:
    return pl.read_parquet(folder / "examples.parquet").sort("task", "idx")["output"].to_list()


@pytest.fixture(scope="module")
def first_run(suite_dir, _key):
    res = _cli("run", "--suite", suite_dir / "suite.yaml", "--out", suite_dir / "r1")
    assert res.exit_code == 0, res.output
    return res, json.loads((suite_dir / "r1" / "results.json").read_text())


def test_server_run_writes_a_complete_run_folder(suite_dir, first_run, llama_server):
    from evalsuite.suite import GenerationConfig

    res, results = first_run
    assert results["server"] == {"base_url": llama_server[0], "model": "smollm2"}
    assert results["model"] == "smollm2" and results["adapter"] is None and results["chat_template_sha256"] is None
    assert set(results["tasks"]) == {"alpaca", "gpt4"}
    for name, keys in (("alpaca", {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"}), ("gpt4", {"chrf", "exact_match_normalized"})):
        task = results["tasks"][name]
        assert task["n"] == N and set(task["metrics"]) == keys
        assert task["generation"] == GenerationConfig(max_new_tokens=24).recorded()  # the same record as a local run
        assert len(task["prompts_sha256"]) == len(task["references_sha256"]) == 64
        timing = results["timing"]["tasks"][name]
        assert timing["examples"] == N and timing["from_server"] == N and timing["from_cache"] == 0 and timing["generate_s"] > 0
        assert set(timing["score"]) == {f"{m}_s" for m in ("rouge", "bleu")} if name == "alpaca" else {"chrf_s", "exact_match_normalized_s"}
    examples = pl.read_parquet(suite_dir / "r1" / "examples.parquet")
    assert examples.columns == ["task", "idx", "source", "prompt", "reference", "output", "scores", "stats", "annotations"]
    assert examples.height == 2 * N and examples["output"].str.strip_chars().str.len_chars().min() > 0
    assert all(json.loads(a)["server"]["finish_reason"] in ("stop", "length") for a in examples["annotations"])
    # max_tokens was sent: a 24-token cap shows as finish_reason "length" on long answers
    assert any(json.loads(a)["server"]["finish_reason"] == "length" for a in examples["annotations"])
    # where the time went, printed after the headline numbers
    assert "time:" in res.stdout and "alpaca: generate" in res.stdout and "8 from the server, 0 from the cache" in res.stdout


def test_the_cache_answers_a_second_run_and_compare_takes_two_server_runs(suite_dir, first_run, llama_server):
    # through a counting proxy: another URL, the same requests; the cache key leaves the URL out
    proxy = Proxy(llama_server[0])
    try:
        res = _cli("run", "--suite", suite_dir / "suite.yaml", "--out", suite_dir / "r2", "--server", proxy.url, "--progress")
    finally:
        proxy.close()
    assert res.exit_code == 0, res.output
    assert proxy.forwarded == 0 and proxy.failed == 0  # no generation request reached the server
    second = json.loads((suite_dir / "r2" / "results.json").read_text())
    assert all(t["from_cache"] == N and t["from_server"] == 0 for t in second["timing"]["tasks"].values())
    assert _outputs(suite_dir / "r2") == _outputs(suite_dir / "r1")
    assert second["server"]["base_url"] == proxy.url
    # progress bars (asked for: stderr is no terminal here) with examples per second
    assert "generate alpaca" in res.stderr and "score gpt4" in res.stderr and "ex/s" in res.stderr

    res = _cli("compare", suite_dir / "r1", suite_dir / "r2", "--out", suite_dir / "cmp")
    assert res.exit_code == 0, res.output
    cmp = json.loads((suite_dir / "cmp" / "compare.json").read_text())
    assert set(cmp["tasks"]) == {"alpaca", "gpt4"}
    assert all(r["delta"] == 0 and r["verdict"] == "no significant change" for t in cmp["tasks"].values() for r in t["metrics"])


def test_503_twice_then_the_run_succeeds_after_retries(suite_dir, first_run, llama_server):
    proxy = Proxy(llama_server[0], fail=2)
    try:
        res = _cli("run", "--suite", suite_dir / "nocache.yaml", "--out", suite_dir / "retried", "--server", proxy.url)
    finally:
        proxy.close()
    assert res.exit_code == 0, res.output
    assert proxy.failed == 2 and proxy.forwarded == 2 * N  # two 503s, then every request answered once
    # greedy on the same server: the same answers as the first run
    assert _outputs(suite_dir / "retried") == _outputs(suite_dir / "r1")


def test_a_request_failing_after_its_retries_fails_the_run_in_one_line(suite_dir, llama_server):
    proxy = Proxy(llama_server[0], fail=10**6)
    try:
        cfg = yaml.safe_load((suite_dir / "nocache.yaml").read_text())
        cfg["server"]["retries"] = 2
        (suite_dir / "down.yaml").write_text(yaml.safe_dump(cfg))
        res = _cli("run", "--suite", suite_dir / "down.yaml", "--out", suite_dir / "down", "--server", proxy.url)
    finally:
        proxy.close()
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = res.stderr.strip()
    assert "\n" not in line and "HTTP 503" in line and "after 3 attempts" in line
    assert "example alpaca/" in line and "alpaca.jsonl:" in line  # names the example and its record
    assert not (suite_dir / "down" / "results.json").exists()


def test_an_unusable_server_exits_2_before_any_work(suite_dir, llama_server, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    for args, expected in (
        (["--server", dead], "cannot be used"),
        (["--server-model", "no-such-model"], "does not serve model 'no-such-model'"),
    ):
        res = _cli("run", "--suite", suite_dir / "suite.yaml", "--out", suite_dir / "never", *args)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert "\n" not in res.stderr.strip() and expected in res.stderr
    monkeypatch.setenv("FTW_TEST_SERVER_KEY", "wrong-key")
    res = _cli("run", "--suite", suite_dir / "suite.yaml", "--out", suite_dir / "never")
    assert res.exit_code == 2 and "HTTP 401" in res.stderr
    assert not (suite_dir / "never").exists()


def test_tasks_that_need_the_model_are_refused_for_a_server_run(suite_dir, shared_data):
    cfg = yaml.safe_load((suite_dir / "suite.yaml").read_text())
    cfg["tasks"][0]["metrics"].append("perplexity")
    cfg["tasks"].append({"name": "geo", "kind": "mmlu", "path": str(shared_data / "mmlu" / "high_school_geography_test.csv"), "limit": 4})
    (suite_dir / "needs_model.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli("run", "--suite", suite_dir / "needs_model.yaml", "--out", suite_dir / "never2")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "task alpaca: metric perplexity needs the model's weights" in res.stderr and "task geo: a mmlu task" in res.stderr
    res = _cli("run", "--suite", suite_dir / "suite.yaml", "--adapter", suite_dir, "--out", suite_dir / "never2")
    assert res.exit_code == 2 and "adapter" in res.stderr


def test_scoring_a_server_runs_outputs_gives_its_numbers_and_compare_refuses_the_mix(suite_dir, first_run):
    # the outputs of the server run, written as another team would hand them over: JSONL keyed by idx
    examples = pl.read_parquet(suite_dir / "r1" / "examples.parquet")
    for task in ("alpaca", "gpt4"):
        rows = examples.filter(pl.col("task") == task)
        write_jsonl(suite_dir / f"{task}.outputs.jsonl", [{"idx": i, "output": o} for i, o in zip(rows["idx"], rows["output"])])
    res = _cli("score", "--suite", suite_dir / "suite.yaml", "--model-name", "smollm2 (handed over)", "--out", suite_dir / "scored",
               "--outputs", f"alpaca={suite_dir / 'alpaca.outputs.jsonl'}", "--outputs", f"gpt4={suite_dir / 'gpt4.outputs.jsonl'}")
    assert res.exit_code == 0, res.output
    scored = json.loads((suite_dir / "scored" / "results.json").read_text())
    served = first_run[1]
    for task in ("alpaca", "gpt4"):
        assert {k: m["value"] for k, m in scored["tasks"][task]["metrics"].items()} == {k: m["value"] for k, m in served["tasks"][task]["metrics"].items()}
        assert scored["tasks"][task]["prompts_sha256"] == served["tasks"][task]["prompts_sha256"]
    res = _cli("compare", suite_dir / "r1", suite_dir / "scored", "--out", suite_dir / "cmp_mixed")
    assert res.exit_code == 2 and "scored outputs made elsewhere" in res.output


def test_a_local_run_shows_progress_and_where_the_time_went(suite_dir, capsys):
    from evalsuite.runner import format_timing, run_suite
    from evalsuite.suite import load_suite

    cfg = yaml.safe_load((suite_dir / "suite.yaml").read_text())
    del cfg["server"]
    cfg["tasks"] = [{**cfg["tasks"][0], "limit": 3}]
    cfg["generation"] = {"max_new_tokens": 4, "batch_size": 2}
    (suite_dir / "local.yaml").write_text(yaml.safe_dump(cfg))
    results = run_suite(load_suite(suite_dir / "local.yaml"), out_dir=suite_dir / "local", device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "generate alpaca" in err and "3/3" in err and "ex/s" in err and "score alpaca" in err
    timing = json.loads((suite_dir / "local" / "results.json").read_text())["timing"]
    assert timing["load_model_s"] > 0 and timing["tasks"]["alpaca"]["examples"] == 3 and timing["tasks"]["alpaca"]["generate_s"] > 0
    assert set(timing["tasks"]["alpaca"]["score"]) == {"rouge_s", "bleu_s"} and timing["write_s"] >= 0
    assert timing["total_s"] >= timing["load_model_s"] + timing["tasks"]["alpaca"]["generate_s"]
    text = format_timing(results["timing"])
    assert "load model" in text and "alpaca: generate" in text and "examples/s" in text and "alpaca: score bleu" in text
    assert len(results["chat_template_sha256"]) == 64 and "server" not in results
