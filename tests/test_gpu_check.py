"""The prepared GPU check (bench/gpu_check.py) at toy size on the CPU: the code a GPU machine
runs, so that it cannot rot. What a CPU cannot measure must be recorded as such, not left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "data", "smoke", "validation_vs_eval", "resume", "host_syncs", "throughput_b32",
            "avsc_eval", "cache", "loader", "two_processes", "throughput_batches", "throughput_compile")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    # A generous budget: on a shared 2-core machine the toy run takes a minute or two, and a
    # correctness check skipped for time would prove nothing.
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out),
               "--budget-s", "1200"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {"json": json.loads((out / "gpu_check.json").read_text()), "md": (out / "gpu_check.md").read_text(),
            "stdout": result.stdout}


@pytest.mark.slow
def test_every_section_is_measured_or_skipped_with_a_reason(report):
    sections = report["json"]["sections"]
    assert set(SECTIONS) <= set(sections)
    for name in SECTIONS:
        section = sections[name]
        assert section["status"] in ("measured", "skipped"), (name, section)
        if section["status"] == "skipped":
            assert section["reason"], name
    for name in ("throughput_b32", "throughput_batches", "throughput_compile"):
        for config, figures in sections[name]["configs"].items():
            assert figures["status"] in ("measured", "skipped"), (config, figures)
            assert figures["status"] == "measured" or figures["reason"], config


@pytest.mark.slow
def test_the_correctness_checks_pass(report):
    data = report["json"]
    assert data["correctness"] == {"validation_vs_eval": "PASS", "resume": "PASS", "no_media_imports": "PASS"}
    resume = data["sections"]["resume"]
    assert resume["stop_exit_code"] == 128 + 15 and resume["stopped_at"]["epoch"] == 0
    assert resume["stopped_at"]["batches"] >= 1 and resume["epochs_in_metrics"] == ["1", "2"]
    assert data["sections"]["validation_vs_eval"]["difference"] == pytest.approx(0.0, abs=1e-9)
    for step in ("audio", "video", "joint"):
        assert data["sections"]["smoke"][step]["steps"] == 3, step


@pytest.mark.slow
def test_the_cpu_records_what_it_cannot_measure(report):
    sections = report["json"]["sections"]
    assert sections["host_syncs"]["models"]["joint masked (default)"]["per_step"] == "n/a (CPU)"
    configs = sections["throughput_b32"]["configs"]
    assert configs["joint b8 bf16+CL"]["reason"].startswith("n/a (CPU)")
    assert configs["joint b8 fp32"]["status"] == "measured" and configs["joint b8 fp32"]["efficiency"] > 0
    assert configs["joint b8 fp32"]["gpu_busy_fraction"] == "n/a (CPU)"
    assert sections["loader"]["figures"]["1 workers"]["pinned_copy_ms"] == "n/a (CPU)"
    assert sections["avsc_eval"]["ratio"] > 0 and sections["cache"]["ratio"] > 0
    assert all(t["met"] is None for t in report["json"]["targets"])  # a GPU's targets, not judged here


@pytest.mark.slow
def test_the_table_is_printed_and_written(report):
    assert report["md"].startswith("# GPU check: CPU (cpu) --quick")
    assert "| avsc-eval / bare forward |" in report["md"]
    assert report["md"] in report["stdout"]
