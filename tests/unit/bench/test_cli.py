"""``slot_economy.py --trace FILE``: a trace it has never seen, a table, and the JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slot_economy.cli import main


def test_an_external_trace_prints_a_table_then_one_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "recorded.txt"
    lines = [f"{i * 2.0} v{(i * 7) % 11} u{i % 3} 1.5" for i in range(300)]
    trace.write_text("# voice ids as the allocator logged them\n" + "\n".join(lines) + "\n")
    out = tmp_path / "result.json"
    assert main(["--trace", str(trace), "--slots", "4", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    last = json.loads(printed[-1])
    assert last["trace"] == "recorded.txt"
    assert last["slots"] == 4
    assert set(last["policies"]) == {"LRU", "ARC", "SIEVE", "S3-FIFO", "W-TinyLFU", "product-lru"}
    assert last["default_clones"] > 0  # the product's default policy, adaptive
    # Belady is the least of any policy that never waits by choice (the default may).
    refs = list(last["policies"])
    assert last["belady"] <= min(last["policies"][n] for n in refs)
    assert any("Belady" in line for line in printed[:-1])
    saved = json.loads(out.read_text())["traces"][0]
    assert saved["belady"] == last["belady"]
    assert saved["by_policy"]["LRU"]["clones"] == last["policies"]["LRU"]


def test_a_bad_trace_file_names_the_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "bad.txt"
    trace.write_text("0 a\n1 b\nsoon c\n")
    assert main(["--trace", str(trace), "--out", str(tmp_path / "r.json")]) == 2
    assert "line 3: timestamp must be a number" in capsys.readouterr().err
