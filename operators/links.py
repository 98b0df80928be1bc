"""Extra links of the train and export tasks (Airflow's operator extra links).

Registered as the plugin's ``global_operator_extra_links`` (``plugins/aifactory_plugin.py``), so
the operators stay untouched: Airflow 3.3 resolves a global link in the api-server when the UI (or
``GET /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/links``) asks, by calling
:meth:`get_link` with the serialized task and the task instance's key. A link answers "" (the UI
hides it) for every task that is not a train or export task.

Each link opens a task page of the plugin (:mod:`aifactory.views`): it needs only the task
instance's key, so "Slurm job" works while the train task is deferred and after it failed, not
only once it succeeded (operator links stored in XCom exist only after a task ends). The pages sit
behind Airflow's login and the tenant's DAG permission, and read as the tenant's own identities.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperatorLink

from aifactory import views

#: the task types (operator class names) each link belongs to; tests/unit/test_links.py checks
#: that they are the classes' names
TRAIN_TASK_TYPES = frozenset({"RecipeTrainOperator"})
EXPORT_TASK_TYPES = frozenset({"ExportModelOperator"})


def base_path() -> str:
    """The api-server's path prefix (``[api] base_url``'s path; empty at the root)."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


class TaskPageLink(BaseOperatorLink):
    """A link to one plugin task page, for the tasks of :attr:`task_types` only."""

    page: ClassVar[str]
    task_types: ClassVar[frozenset[str]]

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if getattr(operator, "task_type", None) not in self.task_types:
            return ""
        return views.task_page_url(self.page, dag_id=ti_key.dag_id, run_id=ti_key.run_id, task_id=ti_key.task_id,
                                   map_index=getattr(ti_key, "map_index", -1), base_path=base_path())


class SlurmJobLink(TaskPageLink):
    """The train task's Slurm job: state, exit code, times, nodes, reason (``sacct``)."""

    name = "Slurm job"
    page = views.JOB_PAGE
    task_types = TRAIN_TASK_TYPES


class SlurmLogLink(TaskPageLink):
    """The tail of the train task's Slurm job log."""

    name = "Slurm job log"
    page = views.LOG_PAGE
    task_types = TRAIN_TASK_TYPES


class ModelCardLink(TaskPageLink):
    """The model card of the version the export task published."""

    name = "Model card"
    page = views.CARD_PAGE
    task_types = EXPORT_TASK_TYPES


#: every link the plugin registers
LINKS = (SlurmJobLink(), SlurmLogLink(), ModelCardLink())


# -------------------------------------------------------------------------------------------------
# What the links open: read as the tenant's own identities (plugin pages call these)
# -------------------------------------------------------------------------------------------------

class NotFound(LookupError):
    """Nothing of this tenant answers to the request (the page answers 404 with the message)."""


def _tenant_shell(spec: Any) -> tuple[Any, Any]:
    """The tenant's own SSH login to its cluster (its key, its Unix user) and the cluster spec."""
    from aifactory.hpc.slurm import tenant_ssh_conn_id
    from aifactory.tenants import load_cluster
    from operators.hooks import FactorySSHHook

    cluster = load_cluster(spec.cluster)
    return FactorySSHHook(ssh_conn_id=tenant_ssh_conn_id(spec, cluster)), cluster


def _sacct(hook: Any, command: str) -> list[Any]:
    from aifactory.hpc.slurm import parse_sacct

    rc, out, err = hook.run(command, timeout=60)
    if rc != 0:
        raise RuntimeError(f"sacct exited {rc}: {err.strip()[:300]}")
    return parse_sacct(out)


def train_job_id(spec: Any, *, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The Slurm job of a train task instance: Slurm's latest job of the task's deterministic name
    (submitted by any try) under the tenant's account. A train task that keys its job on a
    ``run_key`` (a feed's window training) is found by the key it rendered."""
    from aifactory.hpc.slurm import sacct_by_name_command, select_record

    run_key = rendered_field("run_key", dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)
    name = views.train_job_name(spec, dag_id=dag_id, run_id=run_key if isinstance(run_key, str) and run_key
                                else run_id, task_id=task_id, map_index=map_index)
    hook, _ = _tenant_shell(spec)
    try:
        records = [r for r in _sacct(hook, sacct_by_name_command([name], "2000-01-01")) if views.owns_job(r, spec)]
    finally:
        hook.close()
    record = select_record(records, name=name)
    if record is None:
        raise NotFound(f"task {task_id} of run {run_id} has submitted no Slurm job (yet): Slurm knows no job "
                       f"named {name} under account {spec.slurm_account}")
    return record.job_id


def job_page(spec: Any, job_id: str, *, log_tail: bool = False) -> dict[str, Any] | str:
    """One job of the tenant as Slurm records it, or (``log_tail``) the last bytes of its log, read
    by the tenant's own Unix user from the tenant's run directory."""
    import base64

    from aifactory.hpc.slurm import JOB_ID_RE, read_log_command, sacct_command, select_record

    if not JOB_ID_RE.fullmatch(job_id or ""):
        raise NotFound("a Slurm job id is digits (optionally _<index>)")
    hook, cluster = _tenant_shell(spec)
    try:
        record = select_record([r for r in _sacct(hook, sacct_command([job_id])) if views.owns_job(r, spec)],
                               job_id=job_id)
        if record is None:
            raise NotFound(f"no Slurm job {job_id} of tenant {spec.tenant} (account {spec.slurm_account})")
        log_path = views.job_log_path(spec.areas(cluster), record)
        if not log_tail:
            return views.job_page(record, spec, log_path=log_path)
        try:
            with hook.sftp() as sftp:
                size = sftp.stat(log_path).st_size or 0
        except FileNotFoundError:
            return f"(job {job_id} has written no log yet: {log_path})\n"
        rc, out, err = hook.run(read_log_command(log_path, max(0, size - views.LOG_TAIL_BYTES),
                                                 views.LOG_TAIL_BYTES), timeout=60)
        if rc != 0:
            raise RuntimeError(f"reading {log_path} exited {rc}: {err.strip()[:300]}")
        return base64.b64decode(out.strip() or b"").decode("utf-8", "replace")
    finally:
        hook.close()


def model_card(spec: Any, model: str, version: str) -> str:
    """The published model card (``MODEL_CARD.md``) of one model version, read with the tenant's own
    S3 credential; a version without its ``manifest.json`` is not published and has no card."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.exceptions import ClientError

    from aifactory import layout
    from aifactory.platform.objectstore import tenant_s3_conn_id

    key = views.card_key(spec, model, version)
    if key is None:
        raise NotFound(f"model and version must match {layout.NAME_RE.pattern} and {layout.VERSION_RE.pattern}")
    s3 = S3Hook(aws_conn_id=tenant_s3_conn_id(spec)).get_conn()
    try:
        s3.head_object(Bucket=spec.bucket, Key=spec.model_prefix(model, version) + layout.MANIFEST_NAME)
        return s3.get_object(Bucket=spec.bucket, Key=key)["Body"].read().decode("utf-8", "replace")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise NotFound(f"model {model} version {version} of tenant {spec.tenant} is not published") from exc
        raise


def export_result(*, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
    """The export task instance's result (its return-value XCom), from the metadata database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run_id, key="return_value", dag_ids=dag_id,
                                                 task_ids=task_id, map_indexes=map_index)).first()
        return XComModel.deserialize_value(row) if row is not None else None


def rendered_field(field: str, *, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
    """One rendered template field of a task instance (None before it ran, or without that field)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rtif
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        fields = session.scalar(select(Rtif.rendered_fields).where(
            Rtif.dag_id == dag_id, Rtif.run_id == run_id, Rtif.task_id == task_id, Rtif.map_index == map_index))
    return fields.get(field) if isinstance(fields, dict) else None
