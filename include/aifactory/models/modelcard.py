"""The model card: one JSON document (``model_card.json``) and its Markdown rendering (``MODEL_CARD.md``).

A card records exactly what produced a model, so that a startup (or an auditor) can trace it back:

=====================  =========================================================================
field (JSON path)      what
=====================  =========================================================================
``dataset.version``    the dataset version (content-addressed) the model was trained on
``dataset.manifest_sha256``  sha256 of that version's ``manifest.json`` (its identity)
``quality.verdict``    the quality gate's verdict (``passed``), with its suite and counts
``recipe``             the training recipe (a folder of ``include/recipes``)
``hyperparameters``    the validated hyperparameters, defaults applied
``code_version``       the factory's code version (package version + git commit)
``slurm.job_ids``      the Slurm job id(s); ``slurm.restarts`` counts requeues of the job
``slurm.cpu_hours``    CPU-hours allocated (Slurm accounting: AllocTRES cpu x elapsed)
``slurm.gpu_hours``    GPU-hours allocated (``slurm.cpu_minutes`` / ``gpu_minutes``: the same in the
                       unit of the tenant's allocation, charged to ``slurm.account``)
``metrics``            the job's ``metrics.json`` (held-out accuracy and loss, ...)
``formats``            the model files: PyTorch, safetensors, ONNX
``onnx_check``         ONNX Runtime vs PyTorch: tolerance, largest difference, re-check on export
=====================  =========================================================================

:data:`REQUIRED_FIELDS` lists these paths; :func:`missing_fields` tells which a card lacks, and
export refuses to publish a card that lacks one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["CardContext", "REQUIRED_FIELDS", "build_card", "missing_fields", "render_card_markdown"]

#: Every field a published card carries (dotted JSON paths); values may be 0 but not missing/None.
REQUIRED_FIELDS: tuple[str, ...] = (
    "tenant",
    "model",
    "version",
    "dataset.name",
    "dataset.version",
    "dataset.manifest_sha256",
    "quality.verdict",
    "recipe",
    "hyperparameters",
    "code_version",
    "slurm.job_ids",
    "slurm.cpu_hours",
    "slurm.gpu_hours",
    "slurm.elapsed_s",
    "metrics",
    "formats",
    "files",
    "published_at",
)


@dataclass(frozen=True)
class CardContext:
    """What the model card records beyond the job's own outputs.

    :param tenant: tenant name.
    :param model: model name (``<dataset>-<recipe>``).
    :param version: model version (deterministic per DAG run).
    :param dag_id: the pipeline's DAG id.
    :param run_id: the DAG run id.
    :param recipe: recipe name.
    :param hyperparameters: validated hyperparameters.
    :param dataset: ``name``, ``version``, ``uri``, ``manifest_sha256``, ``rows``.
    :param quality: ``verdict``, ``suite``, ``expectations``, ``failed``.
    :param slurm: ``job_ids``, ``state``, and accounting: ``elapsed_s``, ``cpu_hours``, ``gpu_hours``,
        ``alloc_tres``; optionally ``resources`` (what was requested) and ``restarts``.
    :param code_version: :func:`aifactory.version.code_version`.
    """

    tenant: str
    model: str
    version: str
    dag_id: str
    run_id: str
    recipe: str
    hyperparameters: dict[str, Any]
    dataset: dict[str, Any]
    quality: dict[str, Any]
    slurm: dict[str, Any]
    code_version: str


def build_card(
    ctx: CardContext,
    *,
    metrics: dict[str, Any],
    files: list[dict[str, Any]],
    published_at: str,
    formats: dict[str, str] | None = None,
    onnx_check: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card as a JSON-ready dict (see the module docstring for the fields)."""
    slurm = dict(ctx.slurm)
    if job:
        # what the job itself recorded: requeues (same job id, restarted) and its rank count
        slurm.setdefault("restarts", job.get("restart_count"))
        slurm.setdefault("world_size", job.get("world_size"))
    return {
        "tenant": ctx.tenant,
        "model": ctx.model,
        "version": ctx.version,
        "dag_id": ctx.dag_id,
        "run_id": ctx.run_id,
        "recipe": ctx.recipe,
        "hyperparameters": ctx.hyperparameters,
        "dataset": ctx.dataset,
        "quality": ctx.quality,
        "slurm": slurm,
        "code_version": ctx.code_version,
        "metrics": metrics,
        "formats": dict(formats or {}),
        "onnx_check": dict(onnx_check or {}),
        "files": list(files),
        "published_at": published_at,
    }


def _get(card: dict[str, Any], path: str) -> Any:
    node: Any = card
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def missing_fields(card: dict[str, Any]) -> list[str]:
    """The :data:`REQUIRED_FIELDS` that ``card`` lacks (missing, None, or empty)."""
    out = []
    for path in REQUIRED_FIELDS:
        value = _get(card, path)
        if value is None or (isinstance(value, (str, list, dict)) and not value):
            out.append(path)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def render_card_markdown(card: dict[str, Any]) -> str:
    """Render the card as Markdown (``MODEL_CARD.md``); every required field appears."""
    ds, q, sl, m = card["dataset"], card["quality"], card["slurm"], card["metrics"]
    res = sl.get("resources") or {}
    oc = card.get("onnx_check") or {}
    tol = oc.get("tolerance") or {}
    lines = [
        f"# Model card: {card['model']} ({card['version']})",
        "",
        f"Tenant **{card['tenant']}**; produced by pipeline `{card['dag_id']}`, run `{card['run_id']}`,"
        f" published {card['published_at']}.",
        "",
        "## Data",
        f"- dataset: `{ds.get('name')}` version `{ds.get('version')}` ({ds.get('rows')} rows)",
        f"- source: `{ds.get('uri')}`",
        f"- dataset manifest sha256: `{ds.get('manifest_sha256')}`",
        f"- quality verdict: **{q.get('verdict')}** ({_fmt(q.get('expectations'))} expectations, "
        f"{_fmt(q.get('failed', 0))} failed) with suite `{q.get('suite')}`",
        "",
        "## Training",
        f"- recipe: `{card['recipe']}`",
        f"- code version: `{card['code_version']}`",
        "- hyperparameters:",
        "",
        "```json",
        json.dumps(card["hyperparameters"], indent=2, sort_keys=True),
        "```",
        "",
        "## Compute",
        f"- Slurm job id(s): {', '.join(str(j) for j in sl.get('job_ids', []))}",
        f"- final state: {sl.get('state')}; requeues: {_fmt(sl.get('restarts'))}; ranks: {_fmt(sl.get('world_size'))}",
        f"- elapsed: {_fmt(sl.get('elapsed_s'))} s; CPU-hours: {_fmt(sl.get('cpu_hours'))}; "
        f"GPU-hours: {_fmt(sl.get('gpu_hours'))} (charged to account `{sl.get('account')}`: "
        f"{_fmt(sl.get('cpu_minutes'))} CPU-minutes, {_fmt(sl.get('gpu_minutes'))} GPU-minutes of its allocation)",
        f"- allocated TRES: `{sl.get('alloc_tres')}`",
    ]
    if res:
        lines.append(
            f"- requested: {res.get('nodes')} node(s), {res.get('cpus_per_task')} CPU(s) per task, "
            f"{res.get('gpus_per_node')} {res.get('gpu_type') or ''} GPU(s) per node, {res.get('mem_gb')} GB per node, "
            f"{res.get('time_limit_minutes')} min, partition `{res.get('partition')}`, account `{res.get('account')}`"
        )
    lines += ["", "## Metrics (held-out split)", "", "| metric | value |", "|---|---|"]
    for key in sorted(m):
        lines.append(f"| {key} | {_fmt(m[key])} |")
    lines += ["", "## Formats", ""]
    for kind, name in sorted(card.get("formats", {}).items()):
        lines.append(f"- {kind}: `{name}`")
    if oc:
        lines += [
            "",
            "## ONNX check",
            "",
            f"ONNX Runtime reproduces PyTorch's logits within atol {_fmt(tol.get('atol'))} + rtol "
            f"{_fmt(tol.get('rtol'))} x |torch|: largest difference {_fmt(oc.get('heldout_max_abs_diff'))} on "
            f"{_fmt(oc.get('heldout_rows'))} held-out rows in the job (ONNX Runtime {oc.get('onnxruntime_version')}, "
            f"opset {oc.get('opset')}); re-checked on export: largest difference "
            f"{_fmt(oc.get('export_recheck_max_abs_diff'))} on the synthetic probe.",
        ]
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    for f in card["files"]:
        lines.append(f"| {f['path']} | {f['bytes']} | `{f['sha256']}` |")
    return "\n".join(lines) + "\n"
