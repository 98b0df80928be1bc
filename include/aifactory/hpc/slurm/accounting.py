"""What a job used: elapsed time, allocated TRES, CPU- and GPU-hours and -minutes (train's result,
the model card, the tenant's usage report in :mod:`aifactory.hpc.slurm.usage`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .parsing import SacctRecord

__all__ = ["accounting", "parse_elapsed", "parse_tres"]


def parse_elapsed(text: str) -> int | None:
    """Slurm durations ``[D-]HH:MM:SS``, ``MM:SS``, ``MM:SS.mmm`` -> seconds; None if unreadable."""
    text = (text or "").strip()
    match = re.fullmatch(r"(?:([0-9]+)-)?(?:([0-9]+):)?([0-9]+):([0-9]+)(?:\.[0-9]+)?", text)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}


def parse_tres(text: str) -> dict[str, float]:
    """Parse ``cpu=2,mem=4G,node=1,billing=2,gres/gpu=1`` into numbers (memory in MiB)."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            continue
        if key == "mem":
            match = re.fullmatch(r"([0-9.]+)([KMGTP]?)", value)
            if match:
                out["mem_mb"] = float(match.group(1)) * _MEM_UNITS[match.group(2) or "M"]
            continue
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def accounting(record: SacctRecord | Mapping[str, Any]) -> dict[str, Any]:
    """Usage of one job for reports and cost attribution: elapsed, TRES, CPU- and GPU-hours."""
    data = record.as_dict() if isinstance(record, SacctRecord) else dict(record)
    elapsed_s = parse_elapsed(str(data.get("elapsed", ""))) or 0
    tres = parse_tres(str(data.get("alloc_tres", "")))
    cpus = tres.get("cpu", 0.0)
    gpus = tres.get("gres/gpu", 0.0)
    return {
        "job_id": data.get("job_id"),
        "account": data.get("account"),
        "partition": data.get("partition"),
        "state": data.get("state"),
        "exit_code": data.get("exit_code"),
        "elapsed_s": elapsed_s,
        "alloc_tres": tres,
        "nodes": int(tres.get("node", 0)),
        "node_list": data.get("node_list"),
        "cpu_hours": round(cpus * elapsed_s / 3600, 6),
        "gpu_hours": round(gpus * elapsed_s / 3600, 6),
        # the unit of the tenant's allocation (GrpTRESMins) and of the train task's budget check
        "cpu_minutes": round(cpus * elapsed_s / 60, 3),
        "gpu_minutes": round(gpus * elapsed_s / 60, 3),
        "submit": data.get("submit"),
        "start": data.get("start"),
        "end": data.get("end"),
    }

