"""Where everything lives: every S3 key, every HPC path, every file name and every name rule.

This module is the one definition of the factory's storage layout (``docs/layout.md`` draws it).
Every other module asks it for a key, a path or a pattern instead of building one; a test imports
each rule from here, and the duplicate-code scan keeps second copies out.

Object store (``s3://<bucket>/``, the bucket comes from the tenant spec)::

    <tenant>/raw/...                                     the startup's uploads (read-only to us)
    <tenant>/datasets/<name>/<version>/                  one immutable dataset version
        part-00000.parquet ...                             shards, uploaded first
        manifest.json                                      written last, never rewritten
        quality/<suite>/<params digest>/quality.json       one verdict per suite and suite params
    <tenant>/models/<model>/<version>/                   one published model
        model.*, metrics.json, MODEL_CARD.md, model_card.json
        manifest.json                                      written last, never overwritten

HPC storage: each tenant has two areas on its cluster, 0700 and its Unix user's. Where they are
comes from the cluster spec's ``areas:`` templates (:class:`AreaTemplates`; both default to
``<hpc_root>/<tenant>``, one area)::

    <project area>/                                      what must last (a site's project or work area)
        runs/<job name>/                                   one run directory per task instance
            params.json, job.sh, aifp_runtime/, the recipe's files, slurm-<job id>.out,
            checkpoints/, output/ (with _COMPLETED.json written last by the job)
        envs/env-<lock hash>/                              a built environment of the tenant's own code
        .aifp/bin/                                         platform scripts, named by their sha256
    <scratch area>/                                      large, fast, purgeable (a site's scratch)
        datasets/<name>/<version>/                         staged copy, .aifp-verified.json inside

Pure functions only: no I/O, no Airflow.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Folders of this repository
# --------------------------------------------------------------------------------------------

PACKAGE_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = PACKAGE_DIR.parent
REPO_DIR = INCLUDE_DIR.parent
TENANTS_DIR = INCLUDE_DIR / "tenants"
CLUSTERS_DIR = INCLUDE_DIR / "clusters"
RECIPES_DIR = INCLUDE_DIR / "recipes"
PLATFORM_RECIPES_DIR = INCLUDE_DIR / "platform_recipes"
EXPECTATIONS_DIR = INCLUDE_DIR / "expectations"
HPC_SCRIPTS_DIR = INCLUDE_DIR / "stack" / "hpc"
#: the platform job runtime (``aifp_runtime/``) and the fixed batch wrapper every recipe runs through
RUNTIME_DIR = INCLUDE_DIR / "runtime"
#: names another folder of tenant specs than :data:`TENANTS_DIR` (a bench, a test, a staging
#: dag-processor); read only by :func:`tenants_dir`
TENANTS_DIR_ENV = "AIFP_TENANTS_DIR"


def suite_file(name: str, directory: Path | None = None) -> Path:
    """The file of quality suite ``name`` (``<name>.json`` in :data:`EXPECTATIONS_DIR`, or ``directory``);
    ``name`` by :data:`NAME_RE`, checked by the caller."""
    return (directory or EXPECTATIONS_DIR) / f"{name}.json"


def tenants_dir() -> Path:
    """The folder the tenant specs are loaded from: ``$AIFP_TENANTS_DIR`` when set, else
    :data:`TENANTS_DIR`. Read at each load (not at import), so one process can point it elsewhere."""
    override = os.environ.get(TENANTS_DIR_ENV)
    return Path(override) if override else TENANTS_DIR


# --------------------------------------------------------------------------------------------
# Name rules
# --------------------------------------------------------------------------------------------

#: a tenant: 3-32 characters, lower-case letters, digits and '-', starting with a letter. It is a
#: path segment, an S3 key segment, a Slurm account and part of every job name.
TENANT_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
#: datasets, suites, recipes, models: 1-64 characters from a-z, 0-9, '_' and '-'.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: a dataset version: content-addressed (``v-<hex>``).
VERSION_RE = re.compile(r"^v-[0-9a-f]{8,64}$")
#: the deterministic Slurm job name of one task instance: ``aifp-<tenant>-<12 hex>``.
JOB_NAME_PREFIX = "aifp-"
JOB_NAME_RE = re.compile(r"^aifp-[a-z][a-z0-9-]{1,30}[a-z0-9]-[0-9a-f]{12}$")
#: how every factory job's ``--comment`` starts (``aifp:tenant=..,dag=..,...``): the job identity
#: writes it, the orphan sweep reads it
JOB_COMMENT_PREFIX = "aifp:"
#: a file name inside a dataset version, a model or a job's output directory.
SAFE_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


#: a tenant's Unix login on its cluster (``identity.unix_user``): lowercase, starts with a letter
UNIX_USER_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}$")
#: an Airflow connection id named in a spec
CONN_ID_RE = re.compile(r"^[a-z][a-z0-9_]{1,62}$")
#: an Airflow login named in a tenant spec (``airflow_users``)
LOGIN_RE = re.compile(r"^[a-z][a-z0-9._-]{1,62}$")


def tenant_role(tenant: str) -> str:
    """The Airflow role of one tenant's users: its own DAGs, runs, logs and XCom, nothing else."""
    return f"tenant_{tenant}"


#: the Airflow role of the platform (FAB's built-in Admin: every DAG, the platform DAGs' owner)
PLATFORM_ROLE = "Admin"
#: the Airflow role of the factory's operators: clear and backfill every factory DAG, no secrets
OPERATOR_ROLE = "factory_operator"
#: the generated Airflow logins of the platform admin and of the operator
PLATFORM_LOGIN = "platform"
OPERATOR_LOGIN = "operator"
#: ``{login: password}`` of every generated Airflow login, in the secrets directory (0600)
AIRFLOW_USERS_FILE = "airflow-users.json"


def pipeline_dag_id(tenant: str) -> str:
    """The DAG of one tenant's pipeline, generated from its spec (``factory_<tenant>``)."""
    return f"factory_{tenant}"


def probe_dag_id(tenant: str) -> str:
    """The platform's Slurm probe DAG of one tenant (``platform_slurm_probe_<tenant>``)."""
    return f"platform_slurm_probe_{tenant}"


def ssh_pool(cluster: str) -> str:
    """The Airflow pool bounding the tasks that hold an SSH session to one cluster (``ssh_<cluster>``;
    the stack and compose make one per cluster spec: include/stack/pools.py)."""
    return f"ssh_{cluster}"


def sweep_dag_id(cluster: str) -> str:
    """The platform's orphan-sweep DAG of one cluster (``platform_slurm_sweep_<cluster>``)."""
    return f"platform_slurm_sweep_{cluster}"

# --------------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------------

#: the manifest of a dataset version and of a published model (written last in both)
MANIFEST_NAME = "manifest.json"
#: one quality verdict's full report
QUALITY_REPORT_NAME = "quality.json"
#: written by the job, last, into its output directory (schema: aifactory.models.contract)
COMPLETION_MARKER = "_COMPLETED.json"
#: written by staging into a verified dataset directory on the HPC side
STAGING_MARKER = ".aifp-verified.json"
#: the run's parameters, uploaded next to the job script
PARAMS_FILE = "params.json"
#: the fixed batch wrapper in a run directory (the sbatch script), and the job runtime's package
JOB_WRAPPER = "job.sh"
#: the container runtime's arguments (NUL-separated) the wrapper puts in front of the interpreter
#: (aifactory.hpc.containers); absent: the job runs on the node's own software
CONTAINER_ARGV_FILE = "container.argv"
RUNTIME_PACKAGE = "aifp_runtime"
MODEL_CARD_MD = "MODEL_CARD.md"
#: the recipe choice of a run that trains the tenant's own code (its code_uri) instead of a platform recipe
OWN_CODE_RECIPE = "own-code"
#: a tenant code folder's locked requirements (pip's format, every line pinned with --hash)
CODE_LOCK_FILE = "requirements.lock"
#: a tenant code folder's wheels, for sites whose login nodes reach no package index
CODE_WHEELS_DIR = "wheels"
#: written last into a built environment: what it was built from
ENV_READY_MARKER = ".aifp-env.json"
MODEL_CARD_JSON = "model_card.json"
#: the shard file of a dataset version
SHARD_NAME_FORMAT = "part-{index:05d}.parquet"
#: every shard file of a dataset version (a glob; a conversion that restarts removes these first)
SHARD_GLOB = "part-*.parquet"


def shard_name(index: int) -> str:
    return SHARD_NAME_FORMAT.format(index=index)


# --------------------------------------------------------------------------------------------
# Object-store keys (all relative to the tenant's bucket; prefixes end in '/')
# --------------------------------------------------------------------------------------------


def tenant_prefix(tenant: str) -> str:
    return f"{tenant}/"


def raw_prefix(tenant: str) -> str:
    """The startup's upload area: the only place ingest reads from."""
    return f"{tenant}/raw/"


def datasets_prefix(tenant: str) -> str:
    return f"{tenant}/datasets/"


def dataset_prefix(tenant: str, name: str, version: str) -> str:
    """One dataset version."""
    return f"{tenant}/datasets/{name}/{version}/"


def dataset_manifest_key(tenant: str, name: str, version: str) -> str:
    return dataset_prefix(tenant, name, version) + MANIFEST_NAME


def quality_result_key(dataset_prefix_: str, suite: str, params_digest: str) -> str:
    """The verdict of one suite, with one set of suite parameters, on one dataset version."""
    return f"{dataset_prefix_}quality/{suite}/{params_digest}/{QUALITY_REPORT_NAME}"


def dataset_in_prefix(prefix: object, tenant: str) -> tuple[str, str] | None:
    """``(name, version)`` when ``prefix`` is exactly one dataset version of ``tenant``
    (``<tenant>/datasets/<name>/<version>/``, each part by its rule); None for anything else."""
    area = datasets_prefix(tenant)
    if not isinstance(prefix, str) or not key_inside(prefix, area):
        return None
    parts = prefix[len(area):].split("/")
    if len(parts) != 3 or not NAME_RE.match(parts[0]) or not VERSION_RE.match(parts[1]):
        return None
    return (parts[0], parts[1]) if prefix == dataset_prefix(tenant, parts[0], parts[1]) else None


def models_prefix(tenant: str) -> str:
    return f"{tenant}/models/"


def model_prefix(tenant: str, model: str, version: str) -> str:
    """One published model version."""
    return f"{tenant}/models/{model}/{version}/"


def code_prefix(tenant: str) -> str:
    """Where a tenant uploads its own training code: one folder per code name (docs/own-code.md)."""
    return f"{tenant}/code/"


def code_folder_prefix(tenant: str, name: str) -> str:
    """One code folder of a tenant (``<tenant>/code/<name>/``, ``name`` by :data:`NAME_RE`)."""
    return f"{tenant}/code/{name}/"


def doctor_probe_key(tenant: str) -> str:
    """The object ``make doctor`` writes, reads and deletes to check a tenant's S3 credential."""
    return f"{tenant}/.aifp-doctor-probe"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def key_inside(key: str, prefix: str) -> bool:
    """True when ``key`` lies strictly inside ``prefix`` (which ends in '/'), with no '..' or '.' segment."""
    if not prefix.endswith("/") or not key.startswith(prefix) or key == prefix:
        return False
    return all(part not in ("", ".", "..") for part in key[len(prefix):].rstrip("/").split("/"))


# --------------------------------------------------------------------------------------------
# HPC paths
# --------------------------------------------------------------------------------------------


#: the fields an area template may name (``{hpc_root}``, ``{tenant}``, ``{account}``: the tenant's
#: Slurm account, ``{user}``: its Unix login); at least one besides ``{hpc_root}``, so that each
#: tenant's area is its own
AREA_FIELDS = ("hpc_root", "tenant", "account", "user")
#: the area of a cluster spec that names no template: one directory per tenant under the root
DEFAULT_AREA_TEMPLATE = "{hpc_root}/{tenant}"
_AREA_FIELD_RE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class AreaTemplates:
    """A cluster's templates of the two areas of each tenant (``areas: {project, scratch}``)."""

    #: the runs (checkpoints, outputs), the own-code environments, the platform's scripts
    project: str = DEFAULT_AREA_TEMPLATE
    #: the staged datasets: the site may purge it (staging copies a dataset again when it is gone)
    scratch: str = DEFAULT_AREA_TEMPLATE


@dataclass(frozen=True)
class TenantAreas:
    """One tenant's two areas on its cluster (absolute, normalised; the same path when the cluster's
    templates are the same). Every HPC path below is asked of this, never built from a root."""

    project: str
    scratch: str

    @property
    def roots(self) -> tuple[str, ...]:
        """Each distinct area: one when project and scratch are the same directory."""
        return (self.project,) if self.project == self.scratch else (self.project, self.scratch)

    def holding(self, path: object) -> str | None:
        """The area ``path`` lies strictly inside (:func:`path_inside`), or None."""
        if not isinstance(path, str):
            return None
        return next((root for root in self.roots if path_inside(path, root)), None)


def area_template_fields(template: str) -> tuple[str, ...]:
    """The ``{field}`` names ``template`` uses, in order."""
    return tuple(_AREA_FIELD_RE.findall(template))


def area_path(template: str, *, hpc_root: str, tenant: str, account: str, user: str | None) -> str:
    """One area of one tenant: ``template`` with its fields filled in (:data:`AREA_FIELDS`).

    The values come from specs whose name rules allow no '/' or '..', and the result must be an
    absolute path in normal form; a template that needs ``{user}`` for a tenant without one raises.
    """
    values = {"hpc_root": hpc_root.rstrip("/"), "tenant": tenant, "account": account, "user": user}
    fields = area_template_fields(template)
    unknown = [f for f in fields if f not in values]
    if unknown:
        raise ValueError(f"area template {template!r} names {unknown}; it may name only "
                         + ", ".join("{" + f + "}" for f in AREA_FIELDS))
    if "user" in fields and not user:
        raise ValueError(f"area template {template!r} names {{user}}, and tenant {tenant!r} has no "
                         "identity.unix_user")
    path = template.format_map(values)
    if not normal_abs_path(path):
        raise ValueError(f"area {path!r} (template {template!r}) must be an absolute path in normal form "
                         "(no '..', '.', '//' or trailing '/')")
    return path


def hpc_datasets_dir(areas: TenantAreas) -> str:
    """The staged datasets: in the scratch area."""
    return f"{areas.scratch}/datasets"


def hpc_dataset_dir(areas: TenantAreas, name: str, version: str) -> str:
    """The staged copy of one dataset version."""
    return f"{hpc_datasets_dir(areas)}/{name}/{version}"


def runs_dir(areas: TenantAreas) -> str:
    """The run directories: in the project area (checkpoints and outputs must outlive a purge)."""
    return f"{areas.project}/runs"


def run_dir(areas: TenantAreas, job_name: str) -> str:
    """One task instance's run directory: the same for every try of the task."""
    return f"{runs_dir(areas)}/{job_name}"


def run_output_dir(run_dir_: str) -> str:
    """Where the job writes its outputs and, last, its completion marker."""
    return f"{run_dir_}/output"


def superseded_output_dir(run_dir_: str, tag: str) -> str:
    """Where an earlier job's outputs are moved before a new job of other parameters runs in ``run_dir_``."""
    return f"{run_dir_}/output.superseded-{tag}"


def run_checkpoint_dir(run_dir_: str) -> str:
    """Where the job keeps its checkpoints (beside ``output/``, never published)."""
    return f"{run_dir_}/checkpoints"


def slow_steps_switch_path(run_dir_: str) -> str:
    """Tests only: seconds the job of ``run_dir_`` pauses after each step (to be slow enough to preempt).

    Beside the run directory, in the platform's own area, written only by the platform's tests
    before the job starts; no form, parameter or recipe reaches it.
    """
    parent, name = posixpath.split(run_dir_.rstrip("/"))
    return f"{parent}/.aifp-slow-steps/{name}"


def envs_dir(areas: TenantAreas) -> str:
    """The Python environments built for the tenant's own code, one per lock file (project area)."""
    return f"{areas.project}/envs"


def env_dir(areas: TenantAreas, env_id: str) -> str:
    """One environment (``env_id``: ``env-<16 hex of the lock file's sha256>``)."""
    return f"{envs_dir(areas)}/{env_id}"


def platform_bin_dir(areas: TenantAreas) -> str:
    """Platform scripts installed into a tenant's project area, each named by its sha256."""
    return f"{areas.project}/.aifp/bin"


def job_log_path(run_dir_: str, job_id: str) -> str:
    """The batch log sbatch writes from ``--output=<run_dir>/slurm-%j.out``."""
    return f"{run_dir_.rstrip('/')}/slurm-{job_id}.out"


def normal_abs_path(path: str) -> bool:
    """True when ``path`` is absolute and already in normal form: no '..', '.', '//' or trailing '/'."""
    return path.startswith("/") and posixpath.normpath(path) == path and "//" not in path


def paths_overlap(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are the same directory or one lies inside the other (:func:`path_inside`)."""
    return a == b or path_inside(a, b) or path_inside(b, a)


def path_inside(path: str, parent: str) -> bool:
    """True when the absolute POSIX ``path`` lies strictly below ``parent`` (as :func:`key_inside`).

    ``..`` segments, doubled slashes and relative paths never pass: the path must already be in
    normal form, so a caller cannot smuggle a traversal past a later, different normalisation.
    ``parent`` itself is not inside: every caller needs a directory or file of its own there.
    """
    if not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/") or "//" in path:
        return False
    parent = parent.rstrip("/")
    return path.rstrip("/") != parent and path.startswith(parent + "/")


# --------------------------------------------------------------------------------------------
# Data feeds (``feeds:`` in a tenant spec; aifactory.feeds)
# --------------------------------------------------------------------------------------------

#: the date format of a feed partition (``dt=YYYY-MM-DD``): the data interval's start, in UTC
FEED_PARTITION_FORMAT = "%Y-%m-%d"
FEED_PARTITION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def feed_dag_id(tenant: str, feed: str) -> str:
    """The DAG that ingests one partition of a feed per data interval (``feed_<tenant>_<feed>``)."""
    return f"feed_{tenant}_{feed}"


def feed_training_dag_id(tenant: str, feed: str) -> str:
    """The DAG that trains over a window of a feed's partitions (``train_<tenant>_<feed>``)."""
    return f"train_{tenant}_{feed}"


def feed_raw_prefix(tenant: str, feed: str) -> str:
    """Every partition of one feed: ``<tenant>/raw/feeds/<feed>/``."""
    return f"{raw_prefix(tenant)}feeds/{feed}/"


def feed_partition_prefix(tenant: str, feed: str, partition: str) -> str:
    """One partition's uploads: ``<tenant>/raw/feeds/<feed>/dt=YYYY-MM-DD/``."""
    return f"{feed_raw_prefix(tenant, feed)}dt={partition}/"


def feed_asset_key(tenant: str, feed: str) -> str:
    """The key of a feed's Asset (``<tenant>/datasets/<feed>``: the dataset its partitions are versions of)."""
    return f"{datasets_prefix(tenant)}{feed}"


def feed_window_dataset(feed: str, days: int) -> str:
    """The dataset name of a feed's training windows (``<feed>-w<days>d``): one version per window."""
    return f"{feed}-w{int(days)}d"
