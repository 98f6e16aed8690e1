"""What the machine was doing while something was timed: other processes' CPU share, load, threads, the warning.

A time measured while other processes competed for the cores compares the load, not the
frameworks (on the 2-core CPU at load 9, torch's default 2-thread epoch took 415 s against 4 s idle).
The report (report.json "machine", report.md) and the benchmark (its JSON "machine", its table) say so
next to their times. Nothing here times anything or imports a framework.
"""

from __future__ import annotations

from fashion_common.runtime import BUSY_WARNING, OTHERS_BUSY_SHARE, machine_state, others_share, thread_report

TIMED_STAGES = ("lockstep", "training", "distributed")  # the compare stages whose figures include times


def window(start: dict, end: dict) -> dict:
    """One timed span: the machine state at its start and end, the share other processes took, and the verdict.

    Busy when other processes took more than OTHERS_BUSY_SHARE of the usable cores' time during the
    span (measured from /proc/stat less this process's own CPU time). Where that cannot be measured
    (no /proc/stat), the load average decides: above the usable cores at the start or the end. The
    load average alone would call an idle machine busy: it counts the timed program's own threads, and
    remembers the previous minute's work.
    """
    share = others_share(start.get("cpu"), end.get("cpu"), start["usable_cores"])
    busy = share > OTHERS_BUSY_SHARE if share is not None else bool(start.get("busy") or end.get("busy"))
    return {"start": start, "end": end, "others_cpu_share": share, "busy": busy}


def busy_warning(spans) -> str | None:
    """BUSY_WARNING if any span was busy (see window), else None."""
    return BUSY_WARNING if any(span["busy"] for span in spans) else None


def why_busy(spans) -> str:
    """The reason printed beside the warning: what other processes took, or the load average where that is unknown."""
    shares = [s.get("others_cpu_share") for s in spans if s["busy"] and s.get("others_cpu_share") is not None]
    if shares:
        return f"other processes took up to {max(shares):.0%} of the usable cores' time"
    return "load average above the usable cores"


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
        lines.append(
            f"- **load during {stage}**: {_load(span['start'])} at the start, {_load(span['end'])} at the end"
            + others_text(span)
        )
    if machine.get("warning"):
        lines.append(f"- ⚠ **{machine['warning']}** ({why_busy(machine['stages'].values())})")
    return lines + [""]


def others_text(span: dict) -> str:
    share = span.get("others_cpu_share")
    return "" if share is None else f"; other processes took {share:.0%} of the cores' time"


def md_busy_note(report: dict, stage: str) -> list[str]:
    """The warning as a quote under a stage's times, where that stage ran busy; nothing otherwise."""
    span = (report.get("machine") or {}).get("stages", {}).get(stage)
    if not span or not span["busy"]:
        return []
    return [
        f"> ⚠ **{BUSY_WARNING}**: load {_load(span['start'])} at the start, {_load(span['end'])} at the end"
        f"{others_text(span)}.",
        "",
    ]
