"""The GPU check (bench/gpu_check.py) at toy size on the CPU: the code a GPU machine runs, so
that it cannot rot. Each section runs in its own process and appends its figures to
results.jsonl as they are measured; a check killed at any moment leaves whole JSON lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "data", "host_syncs", "graphed_bare", "gap", "graph_vs_eager", "optimizers",
            "batch_scaling", "eval_and_cache", "packing", "compile")


def command(out: Path):
    return [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out)]


def records(out: Path):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    result = subprocess.run(command(out), cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {"records": records(out), "md": (out / "gpu_check.md").read_text(), "stdout": result.stdout, "out": out}


@pytest.mark.slow
def test_every_section_runs_in_its_own_process_and_reports(report):
    outcomes = {r["section"]: r for r in report["records"] if r["name"] == "section"}
    assert list(outcomes) == list(SECTIONS)
    for name, outcome in outcomes.items():
        assert outcome["status"] == "measured", (name, outcome)
        figures = [r for r in report["records"] if r["section"] == name and r["name"] != "section"]
        assert figures, name  # every section wrote at least one figure
    assert {r["value"] for r in report["records"] if r["name"] == "media modules imported"} == {"none"}


@pytest.mark.slow
def test_the_cpu_records_what_it_cannot_measure(report):
    figures = {(r["section"], r["name"]): r for r in report["records"]}
    assert figures[("host_syncs", "host syncs per step, audio b8 graph")]["value"] == "n/a (CPU)"
    assert figures[("graph_vs_eager", "joint b8: trainer step, graph")]["value"] == "n/a (CPU)"
    assert figures[("gap", "gap audio b8: trainer step, live loader")]["ratio"] > 0
    assert figures[("eval_and_cache", "avsc-eval scoring b8 (avsc-eval's)")]["ratio"] > 0
    assert figures[("packing", "4 audio-step process(es), total")]["ratio"] > 0
    assert "n/a (not a GPU)" in report["md"] and "| data | measured |" in report["md"]


@pytest.mark.slow
def test_the_table_is_printed_and_written(report):
    assert report["md"].startswith("# GPU check: CPU (cpu) --quick")
    assert "| gap | gap audio b8: trainer step, live loader |" in report["md"]
    assert report["md"] in report["stdout"]


@pytest.mark.slow
def test_a_section_over_its_cap_is_stopped_with_its_stacks_and_the_next_runs(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(command(out) + ["--sections", "environment,data,gap,optimizers", "--caps", "gap=5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = {r["section"]: r for r in records(out) if r["name"] == "section"}
    assert outcomes["gap"]["status"] == "timeout" and "stack" in outcomes["gap"]["reason"]
    assert outcomes["optimizers"]["status"] == "measured"
    assert (out / "gap.stack.txt").is_file() and "File" in (out / "gap.stack.txt").read_text()


@pytest.mark.slow
def test_a_killed_check_leaves_whole_json_lines(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(command(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    results = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 300
        # the event: a section's own figure (not only the check's first line) is on disk
        while not (results.is_file() and '"section": "data"' in results.read_text()):
            assert process.poll() is None, f"the check ended (code {process.returncode}) before the event"
            assert time.monotonic() < deadline, "no figure within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    lines = results.read_text().splitlines()
    assert len(lines) >= 2
    for line in lines:
        json.loads(line)  # every line is whole
    assert results.read_text().endswith("\n")
