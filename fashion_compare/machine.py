"""What the machine was doing while something was timed: load average, usable cores, threads, and the busy warning.

A time measured while more threads wanted to run than there were cores compares the load, not the
frameworks (on the 2-core CPU at load 9, torch's default 2-thread epoch took 415 s against 4 s idle).
The report (report.json "machine", report.md) and the benchmark (its JSON "machine", its table) say so
next to their times. Nothing here times anything or imports a framework.
"""

from __future__ import annotations

from fashion_common.runtime import BUSY_WARNING, machine_state, thread_report

TIMED_STAGES = ("lockstep", "training", "distributed")  # the compare stages whose figures include times


def window(start: dict, end: dict) -> dict:
    """One timed span: the machine state at its start and end, and whether it was busy at either."""
    return {"start": start, "end": end, "busy": bool(start.get("busy") or end.get("busy"))}


def busy_warning(spans) -> str | None:
    """BUSY_WARNING if the load was above the usable cores at the start or the end of any span, else None."""
    return BUSY_WARNING if any(span["busy"] for span in spans) else None


def record_stage(report: dict, stage: str, start: dict, end: dict | None = None) -> None:
    """Put one compare stage's machine window into report["machine"] (timed stages only); refresh the warning."""
    if stage not in TIMED_STAGES:
        return
    machine = report.setdefault("machine", {"threads": thread_report(), "stages": {}})
    machine["stages"][stage] = window(start, end or machine_state())
    machine["busy"] = any(s["busy"] for s in machine["stages"].values())
    machine["warning"] = busy_warning(machine["stages"].values())


def _load(state: dict) -> str:
    load = state.get("load_1m")
    return f"{'unknown' if load is None else f'{load:.2f}'} on {state['usable_cores']} cores"


def md_machine(report: dict) -> list[str]:
    """report.md's lines on the machine: the threads used and each timed stage's load, with the warning in bold."""
    machine = report.get("machine")
    if not machine:
        return []
    threads = machine["threads"]
    env = ", ".join(f"{k}={v}" for k, v in threads["env"].items()) or "none set"
    torch_threads = threads["torch_threads"] or "not loaded"
    xla = threads["env"].get("XLA_FLAGS", "XLA's default pool")
    lines = [f"- **threads**: torch {torch_threads}, flax {xla}; {threads['policy']}; thread environment: {env}"]
    for stage, span in machine["stages"].items():
        lines.append(f"- **load during {stage}**: {_load(span['start'])} at the start, {_load(span['end'])} at the end")
    if machine.get("warning"):
        lines.append(f"- ⚠ **{machine['warning']}** (load average above the usable cores)")
    return lines + [""]


def md_busy_note(report: dict, stage: str) -> list[str]:
    """The warning as a quote under a stage's times, where that stage ran busy; nothing otherwise."""
    span = (report.get("machine") or {}).get("stages", {}).get(stage)
    if not span or not span["busy"]:
        return []
    return [f"> ⚠ **{BUSY_WARNING}**: load {_load(span['start'])} at the start, {_load(span['end'])} at the end.", ""]
