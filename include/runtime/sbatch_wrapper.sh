#!/bin/bash
# AI Factory batch wrapper: the platform's ONE fixed batch script, copied verbatim into every run
# directory as job.sh (aifactory.models.bundle.WRAPPER); every recipe, the probe included, runs
# through it. Nothing is substituted into it: no hyperparameter, path or resource becomes text here.
#
# How the pieces arrive (see aifactory.hpc.slurm.plan):
#   * resources, account, job name, log path: sbatch argv options (--opt=value), chosen and
#     validated by the submitter; there are deliberately no #SBATCH lines in this file;
#   * working directory: --chdir=<run dir>, which holds params.json, the recipe's files and the
#     platform job runtime (aifp_runtime/, found by the entry point next to itself);
#   * environment: --export=NONE,PATH=...,AIFP_PYTHON=...,AIFP_ENTRYPOINT=...: nothing of the
#     submitting shell leaks in, and nothing secret is passed (SubmitLine is public);
#   * user parameters: params.json (JSON), read by the entry point, never by a shell.
set -euo pipefail

: "${AIFP_PYTHON:?AIFP_PYTHON must be set through sbatch --export}"
: "${AIFP_ENTRYPOINT:?AIFP_ENTRYPOINT must be set through sbatch --export}"
# The entry point is a file of the recipe's folder, at the top of the run directory.
[[ "$AIFP_ENTRYPOINT" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ && -f "$AIFP_ENTRYPOINT" ]] \
  || { echo "aifp: AIFP_ENTRYPOINT must name a file of the run directory" >&2; exit 2; }

echo "aifp: job=${SLURM_JOB_ID:-?} name=${SLURM_JOB_NAME:-?} account=${SLURM_JOB_ACCOUNT:-?}" \
     "partition=${SLURM_JOB_PARTITION:-?} nodes=${SLURM_JOB_NODELIST:-?}" \
     "cpus_per_task=${SLURM_CPUS_PER_TASK:-?} restart_count=${SLURM_RESTART_COUNT:-0}"
echo "aifp: host=$(hostname) dir=$PWD start=$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# The site's software environment (the cluster spec's environment:, aifactory.hpc.site), before
# anything else runs: the setup script (it defines `module`: the job started with --export=NONE),
# `module use` of each path, `module load` of each module. A module that does not load ends the
# job here, naming it, before any rank starts. Site scripts are not written for `set -eu`: it is
# lifted while they run. The loaded modules reach the ranks through srun --export=ALL.
aifp_fail() { echo "aifp: $*" >&2; exit 2; }
if [[ -n "${AIFP_SITE_SETUP:-}" ]]; then
  [[ "$AIFP_SITE_SETUP" =~ ^/[A-Za-z0-9_./+-]+$ && -f "$AIFP_SITE_SETUP" ]] \
    || aifp_fail "the site setup script $AIFP_SITE_SETUP does not exist on $(hostname); fix environment.setup in the cluster spec"
  set +eu
  # shellcheck disable=SC1090
  source "$AIFP_SITE_SETUP"; status=$?
  set -eu
  (( status == 0 )) || aifp_fail "sourcing the site setup script $AIFP_SITE_SETUP failed (status $status)"
fi
if [[ -n "${AIFP_MODULEPATH:-}${AIFP_MODULES:-}" ]]; then
  type module >/dev/null 2>&1 \
    || aifp_fail "no module command after the site setup ${AIFP_SITE_SETUP:-(none)}; is Lmod installed on $(hostname)?"
  IFS=: read -ra aifp_paths <<<"${AIFP_MODULEPATH:-}"
  IFS=: read -ra aifp_modules <<<"${AIFP_MODULES:-}"
  set +eu
  for p in "${aifp_paths[@]}"; do
    [[ "$p" =~ ^/[A-Za-z0-9_./+-]+$ ]] && module use "$p" || aifp_fail "module use $p failed"
  done
  for m in "${aifp_modules[@]}"; do
    [[ "$m" =~ ^[A-Za-z0-9_][A-Za-z0-9_.+/-]*$ ]] || aifp_fail "module name $m is not allowed"
    module load "$m" 2>&1 && module is-loaded "$m" \
      || aifp_fail "module load $m failed on $(hostname) (module avail: $(module -t avail 2>&1 | tr '\n' ' ' | cut -c1-300)); fix environment.modules in the cluster spec"
  done
  set -eu
  echo "aifp: modules loaded: ${LOADEDMODULES:-none}"
fi

# Threads follow the allocation, not the node size (torch would otherwise use every core).
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export PYTHONUNBUFFERED=1

# One rank per task of the allocation: sbatch gives --ntasks-per-node, one per GPU, else one per node
# (aifactory.hpc.slurm.resources.tasks_per_node). The runtime (aifp_runtime.distributed) reads
# SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, binds each rank to the GPU of its local id (NCCL), or
# stays on CPU (gloo), and starts torch.distributed when there are several.
# --export=ALL hands this script's (already clean) environment to the step; without it the
# step would inherit SLURM_EXPORT_ENV=NONE from the batch step and lose OMP_NUM_THREADS.
# Signals: SIGTERM (requeue, preemption, scancel) and SIGUSR1 (sbatch --signal=USR1@<s>, sent to
# the step's tasks) reach the entry point directly (each task execs it); the runtime checkpoints
# and requeues the job (aifp_runtime.signals). A requeued job runs this script again
# (SLURM_RESTART_COUNT above) and the entry point resumes from its checkpoint.
#
# Starting the step needs the Slurm controller. If it is restarting, srun fails before any task
# ran ("Unable to contact slurm controller"): that is no training failure (docs/failure-modes.md,
# section 4), so the step is started again every AIFP_STEP_RETRY_INTERVAL_S seconds for up to
# AIFP_STEP_RETRY_S. Each task touches a marker before it becomes the entry point, so a step whose
# tasks ran, and then failed, is never started twice.
# A container (aifactory.hpc.containers): container.argv, when the plan put one in the run
# directory, holds the site runtime's arguments, NUL-separated (no shell text); each rank then runs
# the image's interpreter inside the image: <runtime args...> $AIFP_PYTHON -u <entry point> ...
aifp_container=()
if [[ -e container.argv ]]; then
  [[ -f container.argv && ! -L container.argv ]] || aifp_fail "container.argv is not a plain file"
  mapfile -d '' -t aifp_container <container.argv
  [[ ${#aifp_container[@]} -gt 0 && -x "${aifp_container[0]}" ]] \
    || aifp_fail "the container runtime ${aifp_container[0]:-(none)} is not installed on $(hostname); fix containers.binary in the cluster spec"
  echo "aifp: container: ${aifp_container[*]}"
fi

retry_for="${AIFP_STEP_RETRY_S:-600}"
interval="${AIFP_STEP_RETRY_INTERVAL_S:-15}"
[[ "$retry_for" =~ ^[0-9]+$ && "$interval" =~ ^[1-9][0-9]*$ ]] || { echo "aifp: bad step retry settings" >&2; exit 2; }
export AIFP_STEP_MARKER="$PWD/.aifp-step-started"
deadline=$(( $(date +%s) + retry_for ))
attempt=1
while :; do
  rm -f -- "$AIFP_STEP_MARKER"
  status=0
  srun --export=ALL --ntasks="${SLURM_NTASKS:-1}" \
    /bin/sh -c ': > "$AIFP_STEP_MARKER" && exec "$@"' aifp-task \
    "${aifp_container[@]}" "$AIFP_PYTHON" -u "$AIFP_ENTRYPOINT" --params params.json || status=$?
  if [[ $status -eq 0 || -e "$AIFP_STEP_MARKER" ]]; then
    rm -f -- "$AIFP_STEP_MARKER"
    exit "$status"  # the entry point ran: its exit status is the job's
  fi
  if (( $(date +%s) + interval > deadline )); then
    echo "aifp: the training step never started (srun exit $status, $attempt attempt(s)); is the Slurm controller up?" >&2
    exit "$status"
  fi
  echo "aifp: the training step did not start (srun exit $status; the Slurm controller may be restarting); attempt $((attempt + 1)) in ${interval}s" >&2
  sleep "$interval"
  attempt=$((attempt + 1))
done
