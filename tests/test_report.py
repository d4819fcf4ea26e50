"""The run report: files, numbers that match the summary, and hostile record text kept inert."""

from __future__ import annotations

import json
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from curate.report import TURN_CHARS, write_report

ALPACA = Path("/work/shared/data/alpaca/alpaca_4000.json")

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
MD_IMAGE = "![x](http://evil/x.png)"
FENCE_BREAK = "```\n</pre><script>alert(2)</script>\n````\n## pwned heading\n[click](https://evil/)\n```"


def _real_records(n: int = 4) -> list[dict]:
    if ALPACA.exists():
        data = json.loads(ALPACA.read_text(encoding="utf-8"))
        return [r for r in data if r["output"].strip()][:n]
    # the shared data folder is missing: fall back to records of the same shape
    return [
        {"instruction": "Arrange the following musical notes", "input": "G, B, E", "output": "E, G, B"},
        {"instruction": "Explain how entrepreneurs utilize crowdfunding.", "input": "", "output": "By using online platforms."},
    ][:n]


def _msgs(rec: dict) -> list[dict]:
    user = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]


def _summary(**over) -> dict:
    s = {
        "run_id": "a1b2c3",
        "name": "quickstart",
        "started": "2026-11-23T10:00:00Z",
        "finished": "2026-11-23T10:00:03Z",
        "seconds": 3.2,
        "inputs": 1200,
        "kept": 1000,
        "rejected": 180,
        "quarantined": 20,
        "invariant_ok": True,
        "tokenizer": "SmolLM2-135M-Instruct",
        "unit": "tokens",
        "files": [
            {"path": "sample_data/alpaca.jsonl", "records": 700, "quarantined": 15},
            {"path": "sample_data/<b>evil</b>.jsonl", "records": 480, "quarantined": 5},
            {"path": "odd|name`![y](http://evil/y.png)`|.jsonl", "records": 20, "quarantined": 0},
        ],
        "shapes": {"alpaca": 680, "sharegpt": 500},
        "stages": [
            {"position": 0, "name": "conversation_structure", "in": 1180, "rejected": 12, "out": 1168,
             "reasons": {"ends_on_user_turn": 10, "empty_turn": 2}},
            {"position": 1, "name": "quality", "in": 1168, "rejected": 100, "out": 1068,
             "reasons": {"too_short": 70, "repetition": 30}},
            {"position": 2, "name": "exact_dedup", "in": 1068, "rejected": 68, "out": 1000,
             "reasons": {"exact_duplicate": 68}},
        ],
        "quarantine_reasons": {"invalid JSON": 19, "invalid UTF-8": 1},
        "fixes": {"placeholder_input": 40, "pii_redacted": 3},
        "splits": {"train": 900, "validation": 50, "test": 50},
        "outputs": {"jsonl": {"train": "data/train.jsonl"}, "parquet": {"train": "data/train.parquet"}, "ledger": "ledger.parquet"},
    }
    s.update(over)
    return s


def _examples() -> dict[str, list[dict]]:
    real = _real_records()

    def row(uid, stage, reason, messages, detail="", duplicate_of=None, source_file="sample_data/alpaca.jsonl"):
        return {"uid": np.int64(uid), "id": f"id{uid:04d}", "source_file": source_file, "source_line": uid + 1,
                "stage": stage, "reason": reason, "detail": detail, "duplicate_of": duplicate_of, "messages": messages}

    return {
        "too_short": [
            row(3, "quality", "too_short", _msgs(real[0]), detail="3 tokens < 5"),
            row(7, "quality", "too_short", [{"role": "user", "content": SCRIPT}, {"role": "assistant", "content": IMG}],
                detail=f"detail with {SCRIPT} and `{SCRIPT}` and ``{IMG}``", source_file=f"evil{IMG}.jsonl"),
        ],
        "repetition": [
            row(9, "quality", "repetition", [{"role": "user", "content": MD_IMAGE + " and [a link](https://evil/)"},
                                             {"role": "assistant", "content": FENCE_BREAK}]),
            row(11, "quality", "repetition", [{"role": "user", "content": "long " + "x" * 5000},
                                              {"role": "assistant", "content": "bidi \u202e gnp.exe and nul \x00 and \ud800"}]),
        ],
        "exact_duplicate": [row(12, "exact_dedup", "exact_duplicate", _msgs(real[1]), duplicate_of="id0003")],
        "ends_on_user_turn": [row(20 + i, "conversation_structure", "ends_on_user_turn", _msgs(r)[:1]) for i, r in enumerate(real[2:])],
        "quarantine": [
            {"source_file": "sample_data/bad.jsonl", "source_line": 4, "field": None, "error": "invalid JSON",
             "raw": '{"instruction": ' + IMG},
            {"source_file": "sample_data/bad.jsonl", "source_line": 9, "field": "output", "error": "invalid UTF-8",
             "raw": "caf\ufffd " + SCRIPT},
        ],
    }


def _lengths(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    before = np.concatenate([rng.lognormal(4.0, 1.0, 1175).astype(np.int64), [20_000, 50_000, 90_000, 120_000, 200_000]])
    return {"before": before, "after": before[:1000]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    paths = write_report(_summary(), _examples(), _lengths(), out)
    return {
        "paths": paths,
        "md": paths["markdown"].read_text(encoding="utf-8"),
        "html": paths["html"].read_text(encoding="utf-8"),
        "json": json.loads(paths["json"].read_text(encoding="utf-8")),
    }


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.style: list[str] = []
        self._in_style = False
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        (self.style if self._in_style else self.text).append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(html_text: str) -> _Collect:
    p = _Collect()
    p.feed(html_text)
    p.close()
    return p


def _fence_map(md: str) -> list[bool]:
    """For each line, whether it lies inside a fenced code block (CommonMark fence rules)."""
    inside, fence, out = False, "", []
    for line in md.split("\n"):
        if not inside:
            m = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
            if m and not (m.group(1)[0] == "`" and "`" in line[m.end():]):
                inside, fence = True, m.group(1)
                out.append(True)
                continue
            out.append(False)
        else:
            out.append(True)
            m = re.match(r"^ {0,3}(`{3,}|~{3,})\s*$", line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                inside = False
    return out


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------------


def test_writes_all_files(report):
    paths = report["paths"]
    assert {"markdown", "html", "json", "histogram"} <= set(paths)
    assert paths["markdown"].name == "report.md" and paths["html"].name == "report.html" and paths["json"].name == "report.json"
    assert paths["histogram"].name == "token_lengths.png" and paths["funnel"].name == "funnel.png"
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    # the markdown links the PNGs by relative path
    assert "](funnel.png)" in report["md"] and "](token_lengths.png)" in report["md"]


def test_pngs_are_real_charts(report):
    import matplotlib.image as mpimg

    for key in ("funnel", "histogram"):
        data = report["paths"][key].read_bytes()
        w, h = _png_size(data)
        assert w >= 600 and h >= 250
        assert len(data) > 10_000
        img = mpimg.imread(report["paths"][key])
        assert img.shape[:2] == (h, w)
        rgb = img[..., :3].reshape(-1, 3)
        assert rgb.std() > 0.05  # not a blank canvas
        packed = (rgb * 255).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
        assert np.unique(packed).size > 20  # bars, text, antialiasing


def test_html_escapes_hostile_text(report):
    html_text = report["html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "&lt;img src=x onerror=alert(1)&gt;" in html_text
    assert "&lt;b&gt;evil&lt;/b&gt;" in html_text  # a file name is record-derived text too
    assert not re.search(r"<\s*script", html_text, re.I)
    assert not re.search(r"<[^>]*\bonerror\s*=", html_text, re.I)
    assert not re.search(r"<[^>]*\bon[a-z]+\s*=", html_text, re.I)  # no event handler attribute at all
    assert not re.search(r"\b(src|href|action|srcset|poster|data)\s*=\s*[\"']?\s*(https?:)?//", html_text, re.I)

    p = _parse(html_text)
    tags = [t for t, _ in p.tags]
    for banned in ("script", "iframe", "object", "embed", "link", "base", "form", "frame", "svg", "video", "audio", "source"):
        assert banned not in tags, banned
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) == 2
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
    for tag, attrs in p.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("src", "href", "action", "srcset", "style", "background", "poster", "formaction"):
                value = value or ""
                if tag == "img" and name == "src" and value.startswith("data:image/png;base64,"):
                    continue
                assert "http" not in value and "//" not in value and "url(" not in value, (tag, name, value[:80])
                if name == "href":
                    assert value.startswith("#"), value
    css = "".join(p.style)
    assert "url(" not in css and "@import" not in css
    csp = [a for t, a in p.tags if t == "meta" and a.get("http-equiv", "").lower() == "content-security-policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]

    # the hostile strings are there as inert, visible text
    text = "".join(p.text)
    for s in (SCRIPT, IMG, MD_IMAGE, "</pre><script>alert(2)</script>"):
        assert s in text


def test_html_examples_chat_style(report):
    p = _parse(report["html"])
    text = "".join(p.text)
    real = _real_records()
    assert real[0]["output"].strip()[:80] in text
    assert "duplicate of" in text and "id0003" in text
    # role labels, one per turn
    roles = [a.get("class", "") for t, a in p.tags if t == "div" and a.get("class", "").startswith("turn")]
    assert "turn user" in roles and "turn assistant" in roles
    # long turns are truncated with a visible marker
    assert "x" * (TURN_CHARS - 10) in text and "x" * TURN_CHARS not in text
    assert re.search(r"x … \[truncated, [\d,]+ more chars\]", text)
    # invisible / bidi / NUL characters shown, not rendered
    assert "<U+202E>" in text and "<U+0000>" in text and "\u202e" not in report["html"]


def test_markdown_fence_cannot_be_broken(report):
    md = report["md"]
    lines = md.split("\n")
    inside = _fence_map(md)
    hostile = ("<script", "onerror", "![x](", "pwned heading", "](https://evil", "\u202e")
    for line, is_code in zip(lines, inside):
        if any(h in line for h in hostile):
            if is_code:
                continue
            # outside a fence, record text may only appear inside an inline code span
            spans = re.findall(r"(`+)(.+?)\1", line)
            assert any(h in body for _, body in spans for h in hostile), line
            stripped = re.sub(r"(`+).+?\1", "", line)
            assert not any(h in stripped for h in hostile), line
    # the record that tries to close the fence did not: the heading after it is outside any fence
    idx = lines.index("## Quarantine examples")
    assert not inside[idx]
    assert "## pwned heading" in lines and inside[lines.index("## pwned heading")]
    assert not any(line.startswith("## pwned") and not c for line, c in zip(lines, inside))
    # every fence around record text is longer than any backtick run inside it
    assert "````````" not in FENCE_BREAK and "`````text" in md


def test_markdown_renders_inert_with_commonmark(report):
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(report["md"])  # raw HTML enabled
    assert not re.search(r"<\s*script", rendered, re.I)
    assert not re.search(r"<[^>]*\bonerror\s*=", rendered, re.I)
    srcs = re.findall(r"<img[^>]*\bsrc=\"([^\"]*)\"", rendered)
    assert sorted(srcs) == ["funnel.png", "token_lengths.png"]
    hrefs = re.findall(r"<a[^>]*\bhref=\"([^\"]*)\"", rendered)
    assert hrefs == []
    assert "<h2>pwned heading</h2>" not in rendered
    # the tables survived (pipes and backticks in record text do not break them)
    assert rendered.count("<table>") >= 8
    files_table = rendered[rendered.index("<th>file</th>"):]
    files_table = files_table[: files_table.index("</table>")]
    assert files_table.count("<tr>") == 3 and files_table.count("<td") == 9  # 3 body rows, 3 cells each
    assert "<code>odd|name`![y](http://evil/y.png)`|.jsonl</code>" in files_table


def test_funnel_numbers_match_summary(report):
    s = _summary()
    js = report["json"]
    funnel = js["funnel"]
    assert [r["stage"] for r in funnel[1:]] == [st["name"] for st in s["stages"]]
    assert funnel[0]["in"] == s["inputs"] and funnel[0]["rejected"] == s["quarantined"]
    for row, st in zip(funnel[1:], s["stages"]):
        assert (row["in"], row["rejected"], row["out"]) == (st["in"], st["rejected"], st["out"])
    assert funnel[-1]["out"] == s["kept"]

    # the HTML funnel table holds the same numbers
    rows = {r[0]: r for r in _parse(report["html"]).rows if r and r[0] in {st["name"] for st in s["stages"]} and len(r) == 6}
    for st in s["stages"]:
        r = rows[st["name"]]
        assert [int(x.replace(",", "")) for x in r[1:4]] == [st["in"], st["rejected"], st["out"]]
        assert r[4] == f"{100 * st['out'] / s['inputs']:.1f}%"
    # and so does the markdown
    for st in s["stages"]:
        assert f"| `{st['name']}` | {st['in']:,} | {st['rejected']:,} | {st['out']:,} |" in report["md"]
    assert "inputs = kept + rejected + quarantined: 1,200 = 1,000 + 180 + 20 ✓" in report["md"]
    assert "1,200 = 1,000 + 180 + 20" in report["html"] and "✓" in report["html"]


def test_reason_counts_sorted_with_share(report):
    reasons = report["json"]["reasons"]
    counts = [r["count"] for r in reasons]
    assert counts == sorted(counts, reverse=True)
    assert (reasons[0]["stage"], reasons[0]["reason"], reasons[0]["count"]) == ("quality", "too_short", 70)
    assert reasons[0]["share"] == f"{100 * 70 / 180:.1f}%"
    assert sum(counts) == 180
    md = report["md"]
    assert md.index("`too_short`") < md.index("`exact_duplicate`") < md.index("`repetition`")
    assert "`placeholder_input` | 40" in md and "`invalid JSON` | 19" in md


def test_json_report(report):
    js = report["json"]
    assert js["summary"] == _summary()
    before, after = _lengths()["before"], _lengths()["after"]
    q = js["lengths"]["quantiles"]
    assert q["before"]["count"] == before.size and q["after"]["count"] == after.size
    assert q["before"]["median"] == pytest.approx(float(np.median(before)), abs=0.01)
    assert q["after"]["p95"] == pytest.approx(float(np.percentile(after, 95)), abs=0.01)
    assert q["before"]["max"] == 200_000
    assert js["lengths"]["unit"] == "tokens"
    # the histogram clips the long tail (here 5 huge records) at p99.5 of 'before'
    assert js["lengths"]["histogram_clip"] == np.ceil(np.percentile(before, 99.5)) < 20_000
    ex = js["examples"]
    assert set(ex) == set(_examples())
    assert ex["too_short"][1]["messages"][0]["content"] == SCRIPT  # JSON keeps the text as is (escaping is the reader's job)
    assert ex["too_short"][0]["uid"] == 3  # numpy ints made plain
    assert ex["quarantine"][0]["error"] == "invalid JSON"
    assert len(ex["repetition"][1]["messages"][0]["content"]) < 5000  # capped


def test_markdown_quantiles_and_histogram_annotation(report):
    md = report["md"]
    assert "| before | 1,180 |" in md and "| after | 1,000 |" in md
    assert "median" in md and "p95" in md


def test_invariant_broken_is_loud(tmp_path):
    # the ledger check failed although the counts add up
    paths = write_report(_summary(invariant_ok=False), {}, {"before": np.array([1, 2, 3]), "after": np.array([])}, tmp_path / "a")
    md = paths["markdown"].read_text(encoding="utf-8")
    html_text = paths["html"].read_text(encoding="utf-8")
    assert "1,200 = 1,000 + 180 + 20 ✗" in md and "INVARIANT BROKEN" in md and "✓" not in md
    inv = [a for t, a in _parse(html_text).tags if a.get("id") == "invariant"]
    assert inv and "bad" in inv[0]["class"].split()
    assert "<strong>✗</strong>" in html_text and "✓" not in html_text
    assert json.loads(paths["json"].read_text())["invariant"]["ok"] is False

    # the counts do not add up: shown with ≠, even when the flag claims success
    paths = write_report(_summary(quarantined=25), {}, {}, tmp_path / "b")
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "1,200 ≠ 1,000 + 180 + 25 ✗" in md
    assert "the counts do not add up" in paths["html"].read_text(encoding="utf-8")


def test_empty_run(tmp_path):
    s = _summary(inputs=3, kept=0, rejected=0, quarantined=3, stages=[], shapes={}, fixes={}, splits={},
                 quarantine_reasons={"invalid JSON": 3}, files=[], tokenizer=None, unit="characters", outputs={})
    paths = write_report(s, {"quarantine": []}, {"before": np.array([]), "after": np.array([])}, tmp_path / "out")
    for p in paths.values():
        assert p.is_file()
    _png_size(paths["histogram"].read_bytes())
    js = json.loads(paths["json"].read_text())
    assert js["lengths"]["quantiles"]["before"]["count"] == 0 and js["lengths"]["quantiles"]["before"]["median"] is None
    assert "No record was rejected." in paths["markdown"].read_text()
