"""The GPU check: stage two's speed on a fresh GPU machine, in sections that always report.

Needs PyTorch, torchvision and h5py (and the package, `pip install --no-deps -e .`); no data, no
internet, none of librosa, soundfile or PyAV. It writes its own shards of the paper's shapes,
then runs each section in its own child process with a hard time limit (its cap). A section
that overruns gets a faulthandler dump of every thread's stack in `OUT/<section>.stack.txt`
and is killed; the next one starts. Every figure is appended to `OUT/results.jsonl` the moment
it is measured (one JSON object per line, written whole), so a check that is itself killed
still leaves everything measured so far; `OUT/gpu_check.md` is written at the end.

Sections, in order, with their caps on a GPU (`--cap-scale` multiplies them; 3 on the CPU):

    environment 10 s, data 5 s, host_syncs 15 s, graphed_bare 70 s, gap 70 s,
    graph_vs_eager 50 s, optimizers 25 s, batch_scaling 60 s, eval_and_cache 45 s,
    packing 50 s, compile 100 s

500 s in all: the whole check takes 8.5 minutes or less. What the sections measure is in
`bench/gpu_check_parts.py`. Targets (one H200) are reported beside the figures, not enforced.

Run: python bench/gpu_check.py --out runs/gpu-check [--device auto] [--quick] [--sections a,b]
     (make gpu-check OUT=DIR). `--device cpu --quick` runs the same code at toy size (the tests).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

parts: Any = None  # bench/gpu_check_parts.py, imported by main() after the stack dump is armed

#: (section, cap in seconds on a GPU), in the order they run.
SECTIONS = (("environment", 10), ("data", 5), ("host_syncs", 15), ("graphed_bare", 70), ("gap", 70),
            ("graph_vs_eager", 50), ("optimizers", 25), ("batch_scaling", 60), ("eval_and_cache", 45),
            ("packing", 50), ("compile", 100))
#: The whole check's limit (8.5 minutes on a GPU).
BUDGET_S = 510.0
RESULTS_NAME = "results.jsonl"
#: The figure every section ends with: stage two must not import librosa, soundfile or av.
MEDIA = "media modules imported"
#: Sections the others need: when one fails, those after it are skipped.
NEEDED = ("data",)
#: The issue's targets (one H200): (section, figure name, wanted, test).
TARGETS = (
    ("gap", "gap audio b32: trainer step, live loader", ">= 15000 samples/s", lambda r: r["value"] >= 15000),
    ("gap", "gap audio b32: trainer step, live loader", "efficiency >= 0.9 (vs graphed bare)",
     lambda r: (r.get("ratio") or 0) >= 0.9),
    ("gap", "gap audio b32: trainer step, live loader", "data wait < 2%",
     lambda r: (r.get("data_wait_fraction") or 1) < 0.02),
    ("batch_scaling", "trainer step joint b32", ">= 450 samples/s", lambda r: r["value"] >= 450),
    ("compile", "trainer step joint b32, compiled regions", ">= 600 samples/s", lambda r: r["value"] >= 600),
    ("compile", "compile: joint regions, first step (cold cache)", "<= 90 s", lambda r: r["value"] <= 90),
    ("eval_and_cache", "avsc-eval scoring b256 (avsc-eval's)", ">= 0.9x bare forward",
     lambda r: (r.get("ratio") or 0) >= 0.9),
    ("packing", "4 audio-step process(es), total", ">= 3.5x one", lambda r: (r.get("ratio") or 0) >= 3.5),
    ("host_syncs", "host syncs per step, audio b32 graph", "== 0", lambda r: r["value"] == 0),
    ("host_syncs", "host syncs per step, joint b32 graph", "== 0", lambda r: r["value"] == 0),
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.jsonl and gpu_check.md")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="toy shapes and few steps (the test suite's run)")
    parser.add_argument("--sections", default=None, help="comma-separated sections to run (default: all)")
    parser.add_argument("--cap-scale", type=float, default=None,
                        help="multiplies every cap (default 1 on CUDA, 3 on the CPU)")
    parser.add_argument("--budget-s", type=float, default=None, help="the whole check's limit (default 510 s x scale)")
    parser.add_argument("--caps", default="", metavar="SECTION=S,...",
                        help="caps in seconds that replace the scaled ones, e.g. compile=300")
    # A section's own process, and the processes of the packing section (started by the check).
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--packing-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    known = [name for name, _ in SECTIONS]
    chosen = [s.strip() for s in args.sections.split(",")] if args.sections else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"expected sections among {known}, got {unknown}")
    args.chosen = chosen
    try:
        args.caps = {k.strip(): float(v) for k, v in (item.split("=") for item in args.caps.split(",") if item.strip())}
    except ValueError:
        parser.error(f"expected --caps SECTION=SECONDS,..., got {args.caps!r}")
    unknown = sorted(set(args.caps) - set(known))
    if unknown:
        parser.error(f"expected --caps of sections among {known}, got {unknown}")
    return args


def child_command(args: argparse.Namespace, device: str, work: Path, *extra: str) -> List[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--device", device,
               "--work", str(work), *extra]
    return command + (["--quick"] if args.quick else [])


# -- a section's process --------------------------------------------------------------------------------


def run_section(args: argparse.Namespace) -> int:
    """In a child: run one section, its figures into results.jsonl; a stack dump before the cap."""
    import torch

    from avsc_pipeline.devices import pick_device

    path = args.out / f"{args.section}.stack.txt"
    stack = getattr(args, "stack", None)
    try:
        setup = parts.Setup(device=pick_device(args.device), quick=args.quick, work=args.work, out=args.out)
        if setup.cuda:
            torch.backends.cudnn.benchmark = True
        if setup.quick and not setup.cuda:
            torch.set_num_threads(1)  # two OpenMP threads on a shared 2-core machine wait on each other
        results = parts.Results(args.out / RESULTS_NAME, args.section)
        if args.section == "packing":
            parts.packing(setup, results, child_command(args, str(setup.device), args.work, "--packing-worker"))
        else:
            function = parts.compile_section if args.section == "compile" else getattr(parts, args.section)
            function(setup, results)
        results.add(MEDIA, ", ".join(parts.media_modules()) or "none")
    finally:
        faulthandler.cancel_dump_traceback_later()
        if stack is not None:
            stack.close()
            if path.stat().st_size == 0:
                path.unlink()
    return 0


# -- the check ----------------------------------------------------------------------------------------------


def run_child(command: List[str], cap: float, log: Path, stack: Path) -> Dict[str, Any]:
    """Run a section's process in its own process group, killed (with its children) at `cap`;
    a process that dumped its stacks before the cap (faulthandler) timed out too."""
    started = time.monotonic()
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=parts.ROOT)
        try:
            code = process.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # itself at its cap, and its loader or packing children
            process.wait()
    seconds = round(time.monotonic() - started, 1)
    if code is None or (code != 0 and stack.is_file() and stack.stat().st_size > 0):
        return {"status": "timeout", "seconds": seconds,
                "reason": f"stopped at its cap of {cap:.0f} s; every thread's stack in {stack.name}"}
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return {"status": "failed", "seconds": seconds, "reason": f"exit {code}: {tail[0][:300]} (log: {log.name})"}
    return {"status": "measured", "seconds": seconds}


def check(args: argparse.Namespace) -> int:
    """Every chosen section in turn, each in its own process; then gpu_check.md."""
    import torch

    from avsc_pipeline.devices import pick_device

    device = pick_device(args.device)
    scale = args.cap_scale if args.cap_scale is not None else (1.0 if device.type == "cuda" else 3.0)
    budget = args.budget_s if args.budget_s is not None else BUDGET_S * scale
    args.out.mkdir(parents=True, exist_ok=True)
    results = parts.Results(args.out / RESULTS_NAME, "check")
    results.write({"section": "check", "name": "started", "value": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "device": str(device), "quick": args.quick, "cap_scale": scale, "budget_s": budget})
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.monotonic()
    failed_needed: Optional[str] = None
    try:
        for name, cap in SECTIONS:
            if name not in args.chosen:
                continue
            cap = args.caps.get(name, cap * scale)
            left = budget - (time.monotonic() - started)
            if failed_needed is not None:
                outcome = {"status": "skipped", "reason": f"needs the {failed_needed} section, which did not finish"}
            elif left < min(cap, 5.0 * scale):
                outcome = {"status": "skipped", "reason": f"budget: {max(left, 0):.0f} s left of {budget:.0f} s"}
            else:
                command = child_command(args, str(device), work, "--section", name, "--cap", str(min(cap, left)))
                outcome = run_child(command, min(cap, left), args.out / f"{name}.log",
                                    args.out / f"{name}.stack.txt")
            results.write({"section": name, "name": "section", "value": outcome["status"], "cap_s": cap, **outcome})
            print(f"[{time.monotonic() - started:5.0f} s] {name}: {outcome['status']}"
                  f"{' (' + outcome['reason'] + ')' if outcome.get('reason') else ''}", file=sys.stderr, flush=True)
            if name in NEEDED and outcome["status"] != "measured":
                failed_needed = name
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    results.write({"section": "check", "name": "finished", "value": round(elapsed, 1), "unit": "s"})
    text = markdown(parts.read_results(args.out / RESULTS_NAME), device, args.quick, elapsed, budget,
                    torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU")
    (args.out / "gpu_check.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def markdown(records: List[Dict[str, Any]], device: Any, quick: bool, elapsed: float, budget: float,
             name: str) -> str:
    """The report: every figure by section, the sections' outcomes, the targets."""
    lines = [f"# GPU check: {name} ({device}){' --quick' if quick else ''}", "",
             f"{elapsed:.0f} s of a {budget:.0f} s budget. Figures are medians of 3 repeats; ratios are against "
             "the baseline measured in the same section's process.", "",
             "| section | figure | value | unit | baseline | ratio | note |", "|---|---|---|---|---|---|---|"]
    figures = [r for r in records if r.get("name") not in ("section", "started", "finished", MEDIA)]
    for r in figures:
        lines.append(f"| {r['section']} | {r['name']} | {_fmt(r.get('value'))} | {r.get('unit', '')} | "
                     f"{_fmt(r.get('baseline'))} | {_fmt(r.get('ratio'), '.3f')} | {r.get('note', '')} |")
    lines += ["", "| section | outcome | seconds | cap |", "|---|---|---|---|"]
    for r in records:
        if r.get("name") == "section":
            reason = f": {r['reason']}" if r.get("reason") else ""
            lines.append(f"| {r['section']} | {r['value']}{reason} | {_fmt(r.get('seconds'))} | {_fmt(r.get('cap_s'))} |")
    media = sorted({r["value"] for r in records if r.get("name") == MEDIA})
    lines += ["", f"Media modules (librosa, soundfile, av) imported by the sections: {', '.join(media) or '-'} "
                  f"({'PASS' if media == ['none'] else 'FAIL' if media else 'not measured'})."]
    lines += ["", "| target | figure | value | met |", "|---|---|---|---|"]
    cuda = str(device).startswith("cuda")
    for section, figure, wanted, test in TARGETS:
        found = [r for r in figures if r["section"] == section and r["name"] == figure]
        if not found or not parts._number(found[-1].get("value")):
            lines.append(f"| {wanted} | {figure} | {'not measured' if not found else found[-1].get('value')} | - |")
            continue
        met = test(found[-1]) if cuda else None
        lines.append(f"| {wanted} | {figure} | {_fmt(found[-1]['value'])} | "
                     f"{'n/a (not a GPU)' if met is None else 'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return format(value, spec)


def main(argv: Optional[Sequence[str]] = None) -> int:
    global parts
    args = parse_args(argv)
    args.out = args.out.resolve()
    if args.section and args.cap > 0:  # armed before torch is imported: a slow import is caught too
        args.stack = open(args.out / f"{args.section}.stack.txt", "w")
        faulthandler.dump_traceback_later(max(1.0, args.cap - 2.0), exit=True, file=args.stack)
    import gpu_check_parts

    parts = gpu_check_parts
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("avsc_pipeline.models.registry").setLevel(logging.ERROR)  # random weights are the point
    sys.modules.setdefault("matplotlib", None)  # as on a bare GPU machine: no figures drawn
    if args.packing_worker:
        from avsc_pipeline.devices import pick_device

        return parts.packing_worker(parts.Setup(pick_device(args.device), args.quick, args.work, args.out))
    if args.section:
        try:
            return run_section(args)
        except Exception:  # noqa: BLE001 - the traceback goes to the section's log, the check goes on
            traceback.print_exc()
            return 1
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
