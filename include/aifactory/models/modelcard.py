"""The model card: one JSON document (``model_card.json``) and its Markdown rendering (``MODEL_CARD.md``).

``MODEL_CARD.md`` is a Hugging Face model card (what a hub repository's ``README.md`` holds): YAML
metadata (license, library, pipeline tag, tags, datasets, metrics, a ``model-index`` of the held-out
results, and the factory's provenance under ``aifactory:``), then the card's sections, intended use
and limitations among them (from the recipe's ``model_card:``). It is built with
``huggingface_hub``'s ``ModelCardData``/``EvalResult``/``ModelCard``, which need no network.

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
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CardContext", "REQUIRED_FIELDS", "build_card", "hub_metadata", "missing_fields", "render_card_markdown"]

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
    :param usage: the recipe's ``model_card:`` (``license``, ``task``, ``intended_use``, ``limitations``).
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
    usage: dict[str, str] = field(default_factory=dict)


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
        "usage": dict(ctx.usage),
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


#: what the card says when a recipe's ``model_card:`` does not
DEFAULT_USAGE = {
    "license": "other",
    "intended_use": "Trained by the AI Factory for this tenant, on the dataset version below; the recipe "
                    "states no intended use beyond it.",
    "limitations": "Measured only on the held-out split of its training dataset (below); not checked for "
                   "bias or for data from other sources.",
}


#: a metric measured on a split of the dataset: ``test_accuracy``, ``onnx_test_accuracy``, ``train_loss``
_SPLIT_METRIC = re.compile(r"^(?:onnx_)?(train|test)_[a-z0-9_]+$")


def _usage(card: dict[str, Any]) -> dict[str, str]:
    """The recipe's ``model_card:`` text over :data:`DEFAULT_USAGE`."""
    return {**DEFAULT_USAGE, **(card.get("usage") or {})}


def hub_metadata(card: dict[str, Any]) -> Any:
    """The card's YAML metadata as ``huggingface_hub.ModelCardData`` (imported here: export only)."""
    from huggingface_hub import EvalResult, ModelCardData

    usage = _usage(card)
    ds, sl, q = card["dataset"], card["slurm"], card["quality"]
    task = usage.get("task") or "other"
    results = []
    for key, value in sorted(card["metrics"].items()):
        split = _SPLIT_METRIC.match(key)  # counts and settings (n_test, epochs, world_size) are no results
        if split and isinstance(value, (int, float)) and not isinstance(value, bool):
            results.append(EvalResult(task_type=task, dataset_type=str(ds.get("name")),
                                      dataset_name=f"{ds.get('name')} {ds.get('version')}",
                                      dataset_split=split.group(1), metric_type=key, metric_value=value))
    formats = sorted(card.get("formats") or {})
    return ModelCardData(
        license=usage["license"],
        library_name="pytorch",
        pipeline_tag=usage.get("task"),
        tags=["aifactory", f"recipe:{card['recipe']}", *formats],
        datasets=[str(ds.get("name"))],
        metrics=[r.metric_type for r in results],
        model_name=card["model"],
        eval_results=results or None,
        aifactory={  # the provenance, machine-readable (the sections below say the same in words)
            "tenant": card["tenant"], "model": card["model"], "version": card["version"],
            "dataset_version": ds.get("version"), "dataset_manifest_sha256": ds.get("manifest_sha256"),
            "quality_verdict": q.get("verdict"), "quality_suite": q.get("suite"),
            "slurm_job_ids": [str(j) for j in sl.get("job_ids", [])], "cpu_hours": sl.get("cpu_hours"),
            "gpu_hours": sl.get("gpu_hours"), "code_version": card["code_version"],
            "onnx_parity": (card.get("onnx_check") or {}).get("passed"),
        },
    )


def render_card_markdown(card: dict[str, Any]) -> str:
    """The card as a Hugging Face model card (``MODEL_CARD.md``): YAML metadata, then the sections;
    every required field appears. ``huggingface_hub.ModelCard`` parses it back (checked here)."""
    from huggingface_hub import ModelCard

    text = f"---\n{hub_metadata(card).to_yaml()}\n---\n\n{_card_body(card)}"
    return ModelCard(text, ignore_metadata_errors=False).content


def _card_body(card: dict[str, Any]) -> str:
    usage = _usage(card)
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
        "## Intended use",
        "",
        usage["intended_use"],
        "",
        "## Limitations",
        "",
        usage["limitations"],
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
