#!/usr/bin/env bash
# The local AI Factory stack on one machine: sshd (the HPC login node), munge + MariaDB + slurmdbd +
# slurmctld + two slurmd (a two-node Slurm cluster with accounting; both nodes on this machine),
# moto's S3 server, and Airflow 3.3 (scheduler, dag-processor, triggerer, api-server) on Postgres;
# with EXECUTOR=celery also Redis and two Celery workers (include/stack/metadata_db.sh).
#
#   stack.sh setup    install what is missing (system packages as root via apt-get, the Airflow venv,
#                     the cluster's training venv); idempotent
#   stack.sh up       setup, then start every component that is not running; idempotent.
#                     AIFP_EXECUTOR=local|celery (make up EXECUTOR=...) picks the executor; without
#                     it, the one the stack runs (default local)
#   stack.sh down     stop every component this script started, and all they started, nothing else
#   stack.sh status   what runs (an Airflow component alive without a heartbeat shows as hung),
#                     and the endpoints and logins
#   stack.sh orphans  list what a dead component left behind (exit 1 if anything); a read-only check
#   stack.sh restart NAME   stop (TERM, then KILL, with everything it left) and start one Airflow
#                     component; what the supervisor runs (docs/operations.md)
#
# Every process a component starts stays findable (its cgroup and session, include/stack/procs.sh):
# up ends what a dead component left before starting it again; down stops the supervisor first,
# then TERMs and KILLs everything left, and fails naming whatever survives.
#
# Every PID file, log and generated key lives under $AIFP_STATE_DIR (default <repo>/.stack).
# The Slurm configuration is the machine's (/etc/slurm), as on a real cluster.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${AIFP_STATE_DIR:-$REPO/.stack}"
VENV="${AIFP_VENV:-$REPO/.venv}"
HPC_ROOT="${AIFP_HPC_ROOT:-/srv/aifactory}"
HPC_USER="${AIFP_HPC_USER:-aifactory}"
SSH_PORT="${AIFP_SSH_PORT:-2222}"
BASTION_PORT="${AIFP_BASTION_PORT:-2223}"
DTN_PORT="${AIFP_DTN_PORT:-2224}"
S3_PORT="${AIFP_S3_PORT:-5555}"
AIRFLOW_PORT="${AIFP_AIRFLOW_PORT:-8080}"
CLUSTER_NAME="${AIFP_CLUSTER_NAME:-aifactory}"
PYTHON="${AIFP_PYTHON:-python3}"
DB_PASSWORD=""  # slurmdbd's MariaDB password: slurmdbd_password

RUN="$STATE/run"
LOG="$STATE/log"
SSHDIR="$STATE/ssh"
AIRFLOW_HOME_DIR="$STATE/airflow"
ENV_FILE="$STATE/stack.env"
# every generated credential: the directory 0700, each file 0600 (docs/security.md)
SECRETS_DIR="${AIFP_SECRETS_DIR:-$STATE/secrets}"

say() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }
# Postgres (Airflow's metadata database), Redis and the Celery workers (make up EXECUTOR=celery)
# shellcheck source=include/stack/metadata_db.sh
source "$REPO/include/stack/metadata_db.sh"
# finding every process a component started, however renamed or reparented (cgroup + session)
# shellcheck source=include/stack/procs.sh
source "$REPO/include/stack/procs.sh"

# ---------------------------------------------------------------------------------------------
# setup: system packages, venvs
# ---------------------------------------------------------------------------------------------
LMOD_EXEC=/usr/share/lmod/lmod/libexec/lmod
# the site's module tree on the local cluster (the cluster spec's environment.module_path)
MODULES_DIR=/opt/aifactory/modulefiles
# the site's container images (the cluster spec's containers.images)
IMAGES_DIR=/opt/aifactory/images
TRAIN_IMAGE=aifactory-train-1.0
SYSTEM_CMDS=(curl:curl sshd:openssh-server munged:munge mariadbd:mariadb-server slurmctld:slurmctld
             slurmd:slurmd slurmdbd:slurmdbd sbatch:slurm-client sacctmgr:slurm-client ssh-keygen:openssh-client
             chromium:chromium pg_ctlcluster:postgresql redis-server:redis-server redis-cli:redis-tools
             "$LMOD_EXEC:lmod" podman:podman runc:runc newuidmap:uidmap)
# chromium: the browser test drives /usr/bin/chromium (Playwright); lmod: environment modules in
# jobs; podman, runc, uidmap: rootless containers in jobs (runc: Debian's crun refuses this
# machine's hybrid cgroups; uidmap: the tenants' subordinate ids)

missing_packages() {
  local pair cmd pkg out=()
  for pair in "${SYSTEM_CMDS[@]}"; do
    cmd="${pair%%:*}"; pkg="${pair##*:}"
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then out+=("$pkg"); fi
  done
  printf '%s\n' "${out[@]}" | sort -u | tr '\n' ' '
}

setup_system() {
  local missing; missing="$(missing_packages)"
  [ -z "${missing// }" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing system packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing slurm-wlm-basic-plugins >"$LOG/apt.log" 2>&1 \
      || { tail -20 "$LOG/apt.log" >&2; die "apt-get install failed (log: $LOG/apt.log)"; }
  else
    die "missing system packages: $missing. Install them (Debian: apt-get install $missing) or run this script as root on Debian."
  fi
}

setup_venv() {
  local stamp="$VENV/.aifp-requirements.sha256" want
  want="$(cat "$REPO/requirements.txt" "$REPO/include/constraints.txt" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  say "creating the Airflow venv in $VENV (requirements.txt)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >"$LOG/pip.log" 2>&1 || true
  (cd "$REPO" && "$VENV/bin/pip" install -q -r requirements.txt && "$VENV/bin/pip" install -q --no-deps -e .) \
    >>"$LOG/pip.log" 2>&1 || { tail -30 "$LOG/pip.log" >&2; die "pip install failed (log: $LOG/pip.log)"; }
  "$VENV/bin/pip" check >/dev/null || die "pip check failed in $VENV"
  echo "$want" >"$stamp"
}

setup_hpc() {
  # The HPC side: a login user, a root for tenant data, and the training environment.
  if ! id "$HPC_USER" >/dev/null 2>&1; then
    say "creating HPC user $HPC_USER"
    useradd --create-home --shell /bin/bash "$HPC_USER"
  fi
  # '*' = no password but not locked (sshd without PAM refuses locked accounts even with keys)
  usermod -p '*' "$HPC_USER"
  install -d -m 0755 -o root -g root "$HPC_ROOT"  # tenant areas inside belong to the tenants' users
  local tv="$HPC_ROOT/venv" stamp want
  stamp="$tv/.aifp-requirements.sha256"
  want="$(sha256sum "$REPO/requirements-train.txt" | cut -d' ' -f1)"
  if [ ! -x "$tv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "creating the cluster's training venv in $tv (requirements-train.txt)"
    [ -x "$tv/bin/python" ] || "$PYTHON" -m venv "$tv"
    "$tv/bin/pip" install -q -r "$REPO/requirements-train.txt" >"$LOG/pip-train.log" 2>&1 \
      || { tail -30 "$LOG/pip-train.log" >&2; die "training venv install failed (log: $LOG/pip-train.log)"; }
    echo "$want" >"$stamp"
  fi
  # the interpreter must be usable by the HPC user
  chmod -R a+rX "$tv"
  # the venv's python may live under /root (pyenv): make its path traversable for the HPC user
  local real; real="$(readlink -f "$tv/bin/python")"
  local d; d="$(dirname "$real")"
  while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
  chmod -R o+rX "$(dirname "$(dirname "$real")")/lib" 2>/dev/null || true
  # the site's environment modules (Lmod), readable by every tenant's login
  local mf rel
  rm -rf "$MODULES_DIR.new" && install -d -m 0755 "$MODULES_DIR.new"
  while IFS= read -r -d '' mf; do
    rel="${mf#"$REPO/include/stack/hpc/modulefiles/"}"
    install -d -m 0755 "$MODULES_DIR.new/$(dirname "$rel")"
    sed "s|@HPC_ROOT@|$HPC_ROOT|g" "$mf" >"$MODULES_DIR.new/$rel" && chmod 0644 "$MODULES_DIR.new/$rel"
  done < <(find "$REPO/include/stack/hpc/modulefiles" -type f -name '*.lua' -print0)
  rm -rf "$MODULES_DIR" && mv "$MODULES_DIR.new" "$MODULES_DIR"
  # the training environment as a container image, rebuilt when the venv or the builder changes
  local image="$IMAGES_DIR/$TRAIN_IMAGE" builder="$REPO/include/stack/hpc/build_image.sh" image_want
  image_want="$(cat "$stamp" "$builder" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$image/.aifp-stamp" 2>/dev/null)" != "$image_want" ]; then
    say "building the container image $image (the training venv as an image)"
    install -d -m 0755 "$IMAGES_DIR"
    bash "$builder" "$tv" "$image" "${TRAIN_IMAGE%-*}:${TRAIN_IMAGE##*-}" "$HPC_ROOT" >"$LOG/build-image.log" 2>&1 \
      || { tail -20 "$LOG/build-image.log" >&2; die "building the container image failed (log: $LOG/build-image.log)"; }
    echo "$image_want" >"$image/.aifp-stamp"
  fi
}

cmd_setup() {
  mkdir -p "$RUN" "$LOG" "$SSHDIR"
  setup_system
  setup_venv
  setup_hpc
}

# ---------------------------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------------------------
wait_for() { # wait_for DESCRIPTION SECONDS CMD...
  local what="$1" secs="$2"; shift 2
  local i
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "$what did not come up within ${secs}s (logs: $LOG)"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# sshd: the HPC login node, and the bastion in front of it (docs/ssh-logins.md)
# ---------------------------------------------------------------------------------------------
# the local site's SSH certificate authority (aifactory.local.ssh_ca): both sshds trust it; the
# factory's connections renew their logins' certificates with it (cert_renew_command)
SSH_CA_DIR="$SECRETS_DIR/ssh_ca"

# start_sshd NAME PORT: start (or, when its configuration changed, reload) $SSHDIR/NAME_config
start_sshd() {
  local name="$1" port="$2" conf="$SSHDIR/$1_config"
  mkdir -p /run/sshd && chmod 0755 /run/sshd  # sshd -t needs it too; a fresh machine (no systemd) has none
  /usr/sbin/sshd -t -f "$conf" || die "sshd config test failed ($conf)"
  if alive "$name"; then
    if ! cmp -s "$conf" "$RUN/$name.config"; then
      kill -HUP "$(pid_of "$name")" && say "$name reloaded (SIGHUP): its configuration changed"
    fi
  else
    ( cg_join "$name"; exec /usr/sbin/sshd -f "$conf" -E "$LOG/$name.log" )
    wait_for "$name on 127.0.0.1:$port" 10 port_open "$port"
    say "$name up on 127.0.0.1:$port"
  fi
  cp "$conf" "$RUN/$name.config"
}

up_sshd() {
  [ -f "$SSHDIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSHDIR/ssh_host_ed25519_key" -C aifactory-hpc-host
  [ -f "$SSHDIR/bastion_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSHDIR/bastion_host_ed25519_key" -C aifactory-bastion-host
  [ -f "$SSHDIR/dtn_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSHDIR/dtn_host_ed25519_key" -C aifactory-dtn-host
  [ -f "$SSHDIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSHDIR/id_ed25519" -C aifactory-airflow
  chmod 600 "$SSHDIR/ssh_host_ed25519_key" "$SSHDIR/bastion_host_ed25519_key" "$SSHDIR/dtn_host_ed25519_key" "$SSHDIR/id_ed25519"
  install -d -m 0700 "$SECRETS_DIR"
  "$VENV/bin/python" -m aifactory.local.ssh_ca --ca-dir "$SSH_CA_DIR" init >/dev/null || die "could not create the local SSH CA in $SSH_CA_DIR"
  # the pinned host keys, as known_hosts for [127.0.0.1]:PORT (the login node's first: tests read line 1)
  { printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$SSHDIR/ssh_host_ed25519_key.pub")"
    printf '[127.0.0.1]:%s %s\n' "$BASTION_PORT" "$(cut -d' ' -f1,2 "$SSHDIR/bastion_host_ed25519_key.pub")"
    printf '[127.0.0.1]:%s %s\n' "$DTN_PORT" "$(cut -d' ' -f1,2 "$SSHDIR/dtn_host_ed25519_key.pub")"
  } >"$SSHDIR/known_hosts"
  local home; home="$(getent passwd "$HPC_USER" | cut -d: -f6)"
  install -d -m 0700 -o "$HPC_USER" -g "$HPC_USER" "$home/.ssh"
  install -m 0600 -o "$HPC_USER" -g "$HPC_USER" "$SSHDIR/id_ed25519.pub" "$home/.ssh/authorized_keys"
  local group
  group="$("$VENV/bin/python" -c 'from aifactory.platform.cluster_identity import LOGIN_GROUP; print(LOGIN_GROUP)')"
  getent group "$group" >/dev/null || groupadd "$group"
  id -nG "$HPC_USER" | tr ' ' '\n' | grep -qx "$group" || usermod -aG "$group" "$HPC_USER"
  # what both sshds share: who may log in (the service user and every tenant user: onboarding adds
  # each to the group, cluster_identity.py), with a key or the site CA's certificate only; many
  # triggers and workers connect at once (docs/failure-modes.md, 10)
  local common
  common="$(cat <<EOF
ListenAddress 127.0.0.1
TrustedUserCAKeys $SSH_CA_DIR/ca.pub
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowGroups $group
UsePAM no
X11Forwarding no
MaxStartups 100:30:200
MaxSessions 50
LogLevel VERBOSE
EOF
)"
  # the login node: keys (authorized_keys, written by onboarding) or certificates
  cat >"$SSHDIR/sshd_config" <<EOF
Port $SSH_PORT
HostKey $SSHDIR/ssh_host_ed25519_key
PidFile $RUN/sshd.pid
$common
AuthorizedKeysFile .ssh/authorized_keys
AllowTcpForwarding no
Subsystem sftp internal-sftp
EOF
  # the data-transfer node: the same file systems (here: the same machine), for bulk data only
  # (staging, export; the connections' transfer_host); logins as on the login node
  cat >"$SSHDIR/sshd-dtn_config" <<EOF
Port $DTN_PORT
HostKey $SSHDIR/dtn_host_ed25519_key
PidFile $RUN/sshd-dtn.pid
$common
AuthorizedKeysFile .ssh/authorized_keys
AllowTcpForwarding no
Subsystem sftp internal-sftp
EOF
  # the bastion (a site's gateway): certificate logins only, no shell, forwarding to the login
  # node and the data-transfer node only; every connection of the factory passes through it (the
  # connections' proxy_jump)
  cat >"$SSHDIR/sshd-bastion_config" <<EOF
Port $BASTION_PORT
HostKey $SSHDIR/bastion_host_ed25519_key
PidFile $RUN/sshd-bastion.pid
$common
AuthorizedKeysFile none
AllowAgentForwarding no
AllowStreamLocalForwarding no
PermitTunnel no
PermitTTY no
AllowTcpForwarding local
PermitOpen 127.0.0.1:$SSH_PORT 127.0.0.1:$DTN_PORT
ForceCommand /usr/sbin/nologin
EOF
  start_sshd sshd "$SSH_PORT"
  start_sshd sshd-bastion "$BASTION_PORT"
  start_sshd sshd-dtn "$DTN_PORT"
}

# ---------------------------------------------------------------------------------------------
up_munge() {
  if alive munged; then return 0; fi
  install -d -m 0755 -o munge -g munge /run/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || /usr/sbin/mungekey -c; chown munge:munge /etc/munge/munge.key; }
  ( cg_join munged; exec runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid --force )
  wait_for munged 10 test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$RUN/munged.pid"
  wait_for "munge round trip" 10 bash -c 'munge -n | unmunge'
  say "munged up"
}

# slurmdbd's MariaDB password, generated once into the secrets dir (0600). A stack from before
# keeps the value its slurmdbd.conf holds: a running slurmdbd knows no other.
slurmdbd_password() {
  [ -n "$DB_PASSWORD" ] && return 0
  local f="$SECRETS_DIR/slurmdbd_db_password" old
  install -d -m 0700 "$SECRETS_DIR"
  if [ ! -s "$f" ] && [ -f /etc/slurm/slurmdbd.conf ]; then
    old="$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf)"
    if [ -n "$old" ]; then (umask 077; printf '%s\n' "$old" >"$f"); fi
  fi
  gen_secret slurmdbd_db_password 'import secrets; print(secrets.token_hex(24))'
  DB_PASSWORD="$(cat "$f")"
}

up_mariadb() {
  slurmdbd_password
  if ! alive mariadb; then
    install -d -m 0755 -o mysql -g mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG/mariadb-install.log" 2>&1
    fi
    start_bg mariadb /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --port=3306 \
      --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/aifp.pid
    wait_for "MariaDB" 30 mariadb -uroot -e 'select 1'
    say "MariaDB up"
  fi
  mariadb -uroot <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

# Two compute nodes on this one machine (LOCAL-STACK-FACTS): each slurmd has its own name (-N),
# Port, spool dir, PID file and log (%n = node name), so multi-node jobs (srun over nodes=2) run
# here as on a real cluster. Each node offers the machine's CPUs and half of its spare memory.
SLURM_NODES=(n1 n2)
SLURM_NODE_PORTS=(17001 17002)
SLURM_PARTITION=debug
GPU_DIR=/var/lib/aifactory/gpus

# The GPUs of the local cluster's partition, from its spec (include/clusters/local.yaml, partitions:):
# prints "<gpu type> <gpus per node>", nothing when it has none. Slurm schedules and accounts them
# as gres/gpu like real ones; each is an empty file here (gres.conf File=, which is what makes
# Slurm hand a job's steps CUDA_VISIBLE_DEVICES), so the ranks train on CPU.
local_cluster_gpus() {
  "$VENV/bin/python" - "$SLURM_PARTITION" <<'EOF'
import sys
from aifactory.tenants import load_cluster
offers = load_cluster("local").gpus
wrong = [o.partition for o in offers if o.partition != sys.argv[1]]
if wrong:
    sys.exit(f"include/clusters/local.yaml: the local cluster has one partition, {sys.argv[1]}; not {wrong}")
for o in offers:
    print(o.gpu_type, o.gpus_per_node)
EOF
}

write_slurm_conf() {
  local host node_line mem nodes="" i g gpus gpu_type="" gpu_count=0 gres_conf=""
  slurmdbd_password
  gpus="$(local_cluster_gpus)" || die "cannot read the local cluster's GPUs"
  [ -z "$gpus" ] || read -r gpu_type gpu_count <<<"$gpus"
  host="$(hostname -s)"
  node_line="$(slurmd -C | head -1)"
  # keep some memory back for Airflow itself; the nodes share the rest
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
  mem=$(( mem > 8192 ? mem - 4096 : mem ))
  mem=$(( mem / ${#SLURM_NODES[@]} ))
  node_line="$(sed -e "s/RealMemory=[0-9]*/RealMemory=$mem/" -e 's/^NodeName=[^ ]* //' <<<"$node_line")"
  # the nodes' features (what a tenant spec's slurm.constraint selects): the machine's architecture
  node_line+=" Features=$(uname -m)"
  install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  for ((i = 0; i < ${#SLURM_NODES[@]}; i++)); do
    install -d -m 0755 "/var/spool/slurmd/${SLURM_NODES[$i]}"
    if [ "$gpu_count" -gt 0 ]; then
      install -d -m 0755 "$GPU_DIR/${SLURM_NODES[$i]}"
      for ((g = 0; g < gpu_count; g++)); do : >"$GPU_DIR/${SLURM_NODES[$i]}/gpu$g"; done
      gres_conf+="NodeName=${SLURM_NODES[$i]} Name=gpu Type=$gpu_type File=$GPU_DIR/${SLURM_NODES[$i]}/gpu[0-$((gpu_count - 1))]"$'\n'
      nodes+="NodeName=${SLURM_NODES[$i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${SLURM_NODE_PORTS[$i]} $node_line Gres=gpu:$gpu_type:$gpu_count State=UNKNOWN"$'\n'
    else
      nodes+="NodeName=${SLURM_NODES[$i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${SLURM_NODE_PORTS[$i]} $node_line State=UNKNOWN"$'\n'
    fi
  done
  printf '# Written by include/stack/stack.sh from include/clusters/local.yaml (partitions:)\n%s' "$gres_conf" \
    >/etc/slurm/gres.conf.aifp
  cat >/etc/slurm/slurm.conf.aifp <<EOF
# Written by AI Factory Pipelines' include/stack/stack.sh: a two-node local cluster on one machine.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
GresTypes=gpu
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# a two-node local cluster: scanning the queue costs nothing, so the main scheduler and the
# backfill run every 5 s (defaults 60 s and 30 s), and a released or requeued job starts within
# seconds rather than up to a minute later (the resilience tests' waits)
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
MpiDefault=none
# accounting: sacct is the source of truth once a job leaves squeue
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# associations: a job runs only under an account its user is associated with (onboarding associates
# each tenant's own Unix user only); limits: GrpTRESMins, the tenant's allocation, is enforced;
# safe: a job starts only if its time limit fits in what is left of the budget.
AccountingStorageEnforce=associations,limits,qos,safe
# gres/gpu is tracked (and budgeted) even on nodes without GPUs (it needs slurmdbd, nothing else)
AccountingStorageTRES=gres/gpu
# GrpTRESMins is enforced by priority/multifactor only; no decay and no reset: usage is a budget
PriorityType=priority/multifactor
PriorityDecayHalfLife=0
PriorityUsageResetPeriod=NONE
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
# No cgroups in these containers: jobacct_gather samples each step's memory and kills a step that
# exceeds its --mem (the job then ends FAILED with "Exceeded job memory limit" in its log, which the
# engine reports as OUT_OF_MEMORY).
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none
# Finished jobs leave squeue after MinJobAge seconds and the engine must then ask sacct. Real
# sites keep 300 s; the local stack keeps 10 s so that every test goes through the sacct path.
MinJobAge=${AIFP_SLURM_MIN_JOB_AGE:-10}
KillWait=10
InactiveLimit=0
SlurmctldTimeout=120
SlurmdTimeout=300
DefMemPerCPU=512
${nodes}PartitionName=$SLURM_PARTITION Nodes=$(IFS=,; echo "${SLURM_NODES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
  cat >/etc/slurm/slurmdbd.conf.aifp <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
  # a running slurmctld must be told about a changed configuration (up_slurm reconfigures)
  cmp -s /etc/slurm/slurm.conf.aifp /etc/slurm/slurm.conf || SLURM_CONF_CHANGED=1
  # a node's GRES are read by its slurmd at start only (up_slurm restarts them on a change)
  cmp -s /etc/slurm/gres.conf.aifp /etc/slurm/gres.conf || SLURM_GRES_CHANGED=1
  mv /etc/slurm/slurm.conf.aifp /etc/slurm/slurm.conf
  mv /etc/slurm/gres.conf.aifp /etc/slurm/gres.conf
  chmod 644 /etc/slurm/gres.conf
  mv /etc/slurm/slurmdbd.conf.aifp /etc/slurm/slurmdbd.conf
  chown root:root /etc/slurm/slurmdbd.conf
  chmod 600 /etc/slurm/slurmdbd.conf
  chmod 644 /etc/slurm/slurm.conf
}

tenant_accounts() { # prints "tenant account" per tenant spec
  "$VENV/bin/python" - "$REPO/include/tenants" <<'EOF'
import sys, pathlib, yaml
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
    spec = yaml.safe_load(p.read_text())
    print(spec["tenant"], spec["slurm"]["account"])
EOF
}

up_slurm() {
  write_slurm_conf
  if alive slurmd; then
    # a slurmd of the older one-node configuration: its node no longer exists, and slurmctld
    # only learns the new node list on a restart
    say "replacing the one-node Slurm configuration by nodes ${SLURM_NODES[*]}"
    stop_pid slurmd
    stop_pid slurmctld
  fi
  local node
  if [ "${SLURM_GRES_CHANGED:-0}" = 1 ]; then
    for node in "${SLURM_NODES[@]}"; do
      if alive "slurmd-$node"; then say "restarting slurmd-$node: its GPUs (gres.conf) changed"; stop_pid "slurmd-$node"; fi
    done
    SLURM_CONF_CHANGED=1
  fi
  if ! alive slurmdbd; then
    start_bg slurmdbd /usr/sbin/slurmdbd -D
    wait_for "slurmdbd" 30 sacctmgr -n list cluster
  fi
  sacctmgr -i -Q add cluster "$CLUSTER_NAME" >/dev/null 2>&1 || true
  # the site's QOS beside Slurm's own "normal" (a site defines its QOS; onboarding grants those a
  # tenant spec names and refuses others): low priority for scheduled feed trainings, high for probes
  local qos prio
  for qos in aifp-feed:10 aifp-probe:1000; do
    prio="${qos#*:}"; qos="${qos%%:*}"
    sacctmgr -n -P show qos "$qos" format=name | grep -qx "$qos" \
      || sacctmgr -i -Q add qos "$qos" Priority="$prio" >/dev/null || die "could not add QOS $qos (sacctmgr)"
  done
  # accounts, associations and allocations: onboarding (aifactory.platform.slurm_accounts)
  if [ "${SLURM_CONF_CHANGED:-0}" = 1 ] && alive slurmctld; then
    # some settings (PriorityType, AccountingStorageTRES) take effect only on a restart; jobs survive it
    say "restarting slurmctld: slurm.conf changed"
    stop_pid slurmctld
  fi
  if ! alive slurmctld; then
    start_bg slurmctld /usr/sbin/slurmctld -D -i
    wait_for "slurmctld" 30 scontrol ping
  fi
  for node in "${SLURM_NODES[@]}"; do
    alive "slurmd-$node" || start_bg "slurmd-$node" /usr/sbin/slurmd -D -N "$node"
  done
  # bring nodes that were marked down by an earlier crash back into service
  wait_for "the compute nodes" 30 bash -c "[ \"\$(sinfo -h -N -o '%T' | grep -cvE 'down|unknown|not_responding')\" -ge ${#SLURM_NODES[@]} ]" \
    || true
  for node in "${SLURM_NODES[@]}"; do
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  done
  wait_for "${#SLURM_NODES[@]} idle compute nodes" 30 bash -c "[ \"\$(sinfo -h -N -o '%T' | grep -cE 'idle|mixed|allocated')\" -ge ${#SLURM_NODES[@]} ]"
  if [ "${SLURM_CONF_CHANGED:-0}" = 1 ]; then scontrol reconfigure >/dev/null 2>&1 || true; fi
  say "Slurm up: cluster $CLUSTER_NAME, nodes ${SLURM_NODES[*]}, accounts: $(tenant_accounts | cut -d' ' -f2 | tr '\n' ' ')"
}

# ---------------------------------------------------------------------------------------------
# S3 endpoint (moto server mode)
# ---------------------------------------------------------------------------------------------
up_s3() {
  local endpoint="http://127.0.0.1:$S3_PORT" objectstore=("$VENV/bin/python" -m aifactory.platform.objectstore)
  install -d -m 0700 "$SECRETS_DIR"
  if ! alive moto; then
    # moto keeps each object in a spooled temp file that goes to disk past 8 MiB, which makes
    # every PUT write (and every GET read) the bytes to /tmp once more. The local endpoint holds
    # objects in memory instead, like the real stores' page cache; it only serves tests, benches
    # and the demo, which delete what they create (benches: a few GB at most).
    # IAM policies are enforced from the first request (one credential per tenant, its own bucket
    # only). moto_iam_server.py makes the platform's user with the key kept in s3/platform.json
    # before it listens, and wraps moto's app: presigned URLs work (pull staging), no anonymous
    # requests, no /moto-api (its docstring says what was measured).
    start_bg moto env MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=$((8 * 1024 * 1024 * 1024)) \
      "$VENV/bin/python" "$REPO/include/stack/moto_iam_server.py" -H 127.0.0.1 -p "$S3_PORT" \
      --platform-credential "$SECRETS_DIR/s3/platform.json"
    wait_for "S3 endpoint on 127.0.0.1:$S3_PORT" 30 port_open "$S3_PORT"
    # moto keeps everything in memory: every tenant's bucket, user, key and connection is made
    # again (onboarding's object-store step; the other steps are unaffected)
    "${objectstore[@]}" onboard --endpoint "$endpoint" --secrets "$SECRETS_DIR" \
      || say "WARNING: onboarding's object-store step failed for the tenant(s) marked FAILED above; fix and run make onboard"
  elif ! "${objectstore[@]}" platform-ok --endpoint "$endpoint" --secrets "$SECRETS_DIR"; then
    die "the S3 endpoint does not know the platform credential $SECRETS_DIR/s3/platform.json (restarted outside $0?); stop it (kill -TERM -- -$(pid_of moto)) and run $0 up again"
  fi
  say "S3 endpoint up on $endpoint (IAM enforced; platform credential $SECRETS_DIR/s3/platform.json)"
}

# ---------------------------------------------------------------------------------------------
# Airflow
# ---------------------------------------------------------------------------------------------
write_env() {
  local conn_ssh conn_s3
  # the secrets backend reads this file at every connection lookup: it must exist before Airflow runs
  install -d -m 0700 "$SECRETS_DIR"
  [ -f "$SECRETS_DIR/connections.json" ] || (umask 077; echo '{}' >"$SECRETS_DIR/connections.json")
  # the service connection: the login node through the bastion, with certificates of the local CA
  # (tenant connections copy all of it but the login and key: cluster_identity.tenant_connection)
  conn_ssh="$("$VENV/bin/python" - "$SSH_PORT" "$HPC_USER" "$SSHDIR/id_ed25519" "$(cut -d' ' -f1,2 "$SSHDIR/ssh_host_ed25519_key.pub")" \
    "$BASTION_PORT" "$(cut -d' ' -f1,2 "$SSHDIR/bastion_host_ed25519_key.pub")" "$VENV/bin/python" "$SSH_CA_DIR" \
    "$DTN_PORT" "$(cut -d' ' -f1,2 "$SSHDIR/dtn_host_ed25519_key.pub")" <<'PY'
import json, sys
port, login, key, host_key, bastion_port, bastion_key, python, ca_dir, dtn_port, dtn_key = sys.argv[1:]
print(json.dumps({"conn_type": "ssh", "host": "127.0.0.1", "port": int(port), "login": login, "extra": {
    "key_file": key, "host_key": host_key, "no_host_key_check": False, "allow_host_key_change": False,
    "look_for_keys": False,
    "proxy_jump": {"host": "127.0.0.1", "port": int(bastion_port), "host_key": bastion_key},
    "transfer_host": {"host": "127.0.0.1", "port": int(dtn_port), "host_key": dtn_key},
    "cert_renew_command": [python, "-m", "aifactory.local.ssh_ca", "--ca-dir", ca_dir, "sign",
                           "--key", "{key_file}", "--principal", "{login}"],
}}))
PY
)" || die "could not write the service connection"
  # the platform's S3 credential (made when the endpoint started): its connection and key
  local s3_key s3_secret
  { read -r s3_key; read -r s3_secret; read -r conn_s3; } < <("$VENV/bin/python" -m aifactory.platform.objectstore \
    platform-env --endpoint "http://127.0.0.1:$S3_PORT" --secrets "$SECRETS_DIR") || die "no platform S3 credential"
  umask 077
  {
    echo "# Generated by include/stack/stack.sh; sourced by every stack component and by the tests."
    printf 'export AIFP_REPO=%q\n' "$REPO"
    printf 'export AIFP_STATE_DIR=%q\n' "$STATE"
    printf 'export AIFP_SECRETS_DIR=%q\n' "$SECRETS_DIR"
    echo "# tenant connections: Airflow reads onboarding's connections file at every lookup (no restart)"
    printf 'export AIRFLOW__SECRETS__BACKEND=%q\n' "airflow.secrets.local_filesystem.LocalFilesystemBackend"
    printf 'export AIRFLOW__SECRETS__BACKEND_KWARGS=%q\n' "{\"connections_file_path\": \"$SECRETS_DIR/connections.json\"}"
    printf 'export AIFP_HPC_ROOT=%q\n' "$HPC_ROOT"
    printf 'export AIFP_S3_ENDPOINT=%q\n' "http://127.0.0.1:$S3_PORT"
    echo "# the platform's S3 credential (tests, the demo, platform tasks; never a tenant task)"
    printf 'export AWS_ACCESS_KEY_ID=%q\n' "$s3_key"
    printf 'export AWS_SECRET_ACCESS_KEY=%q\n' "$s3_secret"
    printf 'export AWS_DEFAULT_REGION=%q\n' "us-east-1"
    printf 'export AIFP_SSH_HOST=%q\n' "127.0.0.1"
    printf 'export AIFP_SSH_PORT=%q\n' "$SSH_PORT"
    printf 'export AIFP_SSH_USER=%q\n' "$HPC_USER"
    printf 'export AIFP_SSH_KEY=%q\n' "$SSHDIR/id_ed25519"
    printf 'export AIFP_SSH_KNOWN_HOSTS=%q\n' "$SSHDIR/known_hosts"
    printf 'export AIFP_BASTION_PORT=%q\n' "$BASTION_PORT"
    printf 'export AIFP_DTN_PORT=%q\n' "$DTN_PORT"
    printf 'export AIFP_SSH_CA_DIR=%q\n' "$SSH_CA_DIR"
    printf 'export AIFP_AIRFLOW_URL=%q\n' "http://127.0.0.1:$AIRFLOW_PORT"
    echo "# Airflow connections (AIRFLOW_CONN_<ID> holding JSON):"
    echo "#   aifactory_hpc_local: the HPC login node over SSH, key auth, host key pinned"
    printf 'export AIRFLOW_CONN_AIFACTORY_HPC_LOCAL=%q\n' "$conn_ssh"
    echo "#   aifactory_s3: the object store, platform credential (moto locally; MinIO or S3 elsewhere)"
    printf 'export AIRFLOW_CONN_AIFACTORY_S3=%q\n' "$conn_s3"
    echo "# Airflow: config file in the repo, state under the stack dir"
    printf 'export AIRFLOW_CONFIG=%q\n' "$REPO/airflow.cfg"
    printf 'export AIRFLOW_HOME=%q\n' "$AIRFLOW_HOME_DIR"
    printf 'export AIRFLOW__CORE__DAGS_FOLDER=%q\n' "$REPO/dags"
    printf 'export AIRFLOW__CORE__PLUGINS_FOLDER=%q\n' "$REPO/plugins"
    echo "# the metadata database (Postgres) and the executor (stack.sh up, AIFP_EXECUTOR)"
    metadata_env_lines
    printf 'export AIRFLOW__API__PORT=%q\n' "$AIRFLOW_PORT"
    printf 'export AIRFLOW__API__BASE_URL=%q\n' "http://127.0.0.1:$AIRFLOW_PORT"
    printf 'export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=%q\n' "http://127.0.0.1:$AIRFLOW_PORT/execution/"
    printf 'export AIRFLOW__LOGGING__BASE_LOG_FOLDER=%q\n' "$AIRFLOW_HOME_DIR/logs"
    printf 'export AIRFLOW__API_AUTH__JWT_SECRET=%q\n' "$(cat "$SECRETS_DIR/jwt_secret")"
    printf 'export AIRFLOW__API__SECRET_KEY=%q\n' "$(cat "$SECRETS_DIR/api_secret_key")"
    printf 'export AIRFLOW__CORE__FERNET_KEY=%q\n' "$(cat "$SECRETS_DIR/fernet_key")"
    printf 'export PATH=%q\n' "$VENV/bin:$PATH"
  } >"$ENV_FILE.tmp"
  umask 022
  chmod 600 "$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# Airflow's own secrets, generated once and kept (a new Fernet key would make the encrypted
# connections and variables in the metadata database unreadable; a new JWT secret invalidates the
# tokens of every running component). docs/security.md lists them.
gen_secret() { # gen_secret NAME PYTHON-CODE: <secrets>/NAME, 0600, from PYTHON-CODE's output
  local f="$SECRETS_DIR/$1"
  if [ ! -s "$f" ]; then
    (umask 077; "$VENV/bin/python" -c "$2" >"$f.tmp") || { rm -f "$f.tmp"; die "could not generate $f (is $VENV set up?)"; }
    mv "$f.tmp" "$f"
    say "generated $f"
  fi
  chmod 600 "$f"
}

gen_airflow_secrets() {
  install -d -m 0700 "$SECRETS_DIR"
  # the JWT secret of an older stack lived in the state dir: keep its value, move the file
  [ -s "$STATE/jwt_secret" ] && [ ! -s "$SECRETS_DIR/jwt_secret" ] && mv "$STATE/jwt_secret" "$SECRETS_DIR/jwt_secret"
  gen_secret jwt_secret 'import secrets; print(secrets.token_hex(32))'
  gen_secret api_secret_key 'import secrets; print(secrets.token_hex(32))'
  gen_secret fernet_key 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'
}

# Airflow's components must share these secrets: the api-server encrypts a deferred task's trigger
# arguments with the Fernet key and the triggerer decrypts them; tokens signed by one are checked by
# the others. Components started with other values (an older stack.env) are stopped, all of them,
# so that they start again together below.
# The same holds for the metadata database and the executor: both are in the sum.
AIRFLOW_PARTS=(airflow-api-server airflow-scheduler airflow-dag-processor airflow-triggerer "${CELERY_WORKERS[@]}")
airflow_keys_sum() {
  { cat "$SECRETS_DIR/fernet_key" "$SECRETS_DIR/jwt_secret" "$SECRETS_DIR/api_secret_key"
    echo "postgres 127.0.0.1:$PG_PORT executor $(stack_executor)"; } | sha256sum | cut -d' ' -f1
}
stop_airflow_on_new_keys() {
  local c running=()
  for c in "${AIRFLOW_PARTS[@]}"; do alive "$c" && running+=("$c"); done
  [ "${#running[@]}" = 0 ] && return 0
  [ "$(cat "$RUN/airflow-keys.sha256" 2>/dev/null)" = "$(airflow_keys_sum)" ] && return 0
  say "Airflow's secrets changed (Fernet key, JWT secret): restarting ${running[*]} together"
  for c in "${running[@]}"; do stop_pid "$c"; done
}

# Onboarding (aifactory.platform.onboard): every tenant spec applied, idempotently, once sshd, Slurm
# and S3 are up and the Airflow database is migrated, before Airflow's components start. A tenant
# that fails is named in the table and does not stop the stack: the others are onboarded.
up_onboarding() {
  say "onboarding the tenants (table in $LOG/onboard.log)"
  if "$VENV/bin/python" -m aifactory.platform.onboard 2>&1 | tee -a "$LOG/onboard.log"; then
    say "tenants onboarded"
  else
    say "WARNING: onboarding failed for the tenant(s) marked FAILED above; fix and run make onboard"
  fi
}

# One Airflow component by name: what up starts and what the supervisor restarts (cmd_restart)
start_airflow_part() {
  case "$1" in
    airflow-api-server) start_bg "$1" airflow api-server --port "$AIRFLOW_PORT" --host 127.0.0.1 ;;
    airflow-scheduler) start_bg "$1" airflow scheduler ;;
    airflow-dag-processor) start_bg "$1" airflow dag-processor ;;
    airflow-triggerer) start_bg "$1" airflow triggerer ;;
    airflow-celery-worker-*) start_celery_worker "$1" ;;
    *) die "not an Airflow component: '$1' (${AIRFLOW_PARTS[*]})" ;;
  esac
}

# The supervisor (aifactory.local.supervisor; docs/operations.md): restarts an Airflow component
# that died or stopped heartbeating, never anything else. up stops it while it (re)starts Airflow.
start_supervisor() {
  start_bg supervisor "$VENV/bin/python" -m aifactory.local.supervisor run --state "$STATE" \
    --url "http://127.0.0.1:$AIRFLOW_PORT" --stack "$REPO/include/stack/stack.sh"
}

# the supervisor holds $RUN/supervisor.lock while it restarts a component: a restart in progress
# ends before the supervisor is stopped (never a half-started component)
stop_supervisor() {
  local fd
  exec {fd}>"$RUN/supervisor.lock"
  flock -w 330 "$fd" || say "WARNING: the supervisor's restart did not end within 330 s; stopping it anyway"
  stop_pid supervisor || true
  exec {fd}>&-
}

up_airflow() {
  mkdir -p "$AIRFLOW_HOME_DIR"
  stop_supervisor
  gen_airflow_secrets
  stop_airflow_on_new_keys
  write_env
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  if ! alive airflow-api-server; then
    say "migrating the Airflow database"
    airflow db migrate >>"$LOG/airflow-db.log" 2>&1 || { tail -20 "$LOG/airflow-db.log" >&2; die "airflow db migrate failed"; }
  fi
  up_pools
  up_onboarding
  local c
  for c in airflow-api-server airflow-scheduler airflow-dag-processor airflow-triggerer; do start_airflow_part "$c"; done
  if [ "$(stack_executor)" = celery ]; then up_celery_workers; fi
  airflow_keys_sum >"$RUN/airflow-keys.sha256"
  wait_for "Airflow api-server on 127.0.0.1:$AIRFLOW_PORT" 120 curl -fsS "http://127.0.0.1:$AIRFLOW_PORT/api/v2/monitor/health"
  start_supervisor
  say "Airflow up on http://127.0.0.1:$AIRFLOW_PORT (FAB logins: make status)"
}

# ---------------------------------------------------------------------------------------------
COMPONENTS=(supervisor "${CELERY_WORKERS[@]}" airflow-triggerer airflow-dag-processor airflow-scheduler airflow-api-server redis postgres moto slurmd-n1 slurmd-n2 slurmd slurmctld slurmdbd mariadb munged sshd-dtn sshd-bastion sshd)

cmd_up() {
  local c
  cmd_setup
  up_sshd
  up_munge
  up_mariadb
  up_slurm
  up_s3
  local executor; executor="$(stack_executor)"
  echo "$executor" >"$EXECUTOR_FILE"
  up_postgres
  if [ "$executor" = celery ]; then up_redis; else stop_celery; fi
  up_airflow
  for c in "${COMPONENTS[@]}"; do adopt "$c"; done  # components started by an older stack.sh
  cmd_status
}

cmd_down() {
  local c
  for c in "${COMPONENTS[@]}"; do  # the supervisor first: it would start again what down stops
    case "$c" in
      postgres) stop_postgres || true ;;
      supervisor) stop_supervisor ;;
      *) stop_pid "$c" || true ;;
    esac
  done
  # every member of every component (procs.sh: its cgroup and session, however renamed), then
  # anything else of ours still holding the stack's dirs or binaries: reported, not guessed at
  local mine left i
  mine="$(survivors "${COMPONENTS[@]}")"
  for ((i = 0; i < 20; i++)); do
    left="$(pgrep -af "$STATE/|$VENV/bin/|slurmstepd|-D $PG_DATA|redis-server 127.0.0.1:$REDIS_PORT" || true
            for n in slurmctld slurmd slurmdbd munged mariadbd moto_server; do pgrep -ax "$n" || true; done)"
    [ -z "$left" ] && break
    sleep 0.5
  done
  if [ -n "$mine" ]; then
    say "ERROR: still running after down (TERM, then KILL), by component:"; echo "$mine"
  fi
  if [ -n "$left" ]; then
    say "ERROR: still running after down (using the stack's dirs, binaries or daemons):"; echo "$left"
  fi
  if [ -n "$mine$left" ]; then
    say "the stack is NOT down: end them by hand (kill -KILL <pid>) or find what keeps them alive"
    return 1
  fi
  say "stack down"
}

cmd_status() {
  local c state rc=0
  local executor parts=(sshd sshd-bastion sshd-dtn munged mariadb slurmdbd slurmctld slurmd-n1 slurmd-n2 moto postgres supervisor)
  executor="$(stack_executor)"
  if [ "$executor" = celery ]; then parts+=(redis); fi
  for c in "${parts[@]}"; do
    if alive "$c"; then state="running (pid $(pid_of "$c"))"; else state="stopped"; rc=1; fi
    printf '  %-22s %s\n' "$c" "$state"
  done
  # Airflow's components as the supervisor judges them: running, starting, dead, or hung (alive
  # without a heartbeat in the health endpoint, or an api-server that stopped answering)
  "$VENV/bin/python" -m aifactory.local.supervisor check --state "$STATE" --url "http://127.0.0.1:$AIRFLOW_PORT" || rc=1
  # the logins onboarding generated (operators/access.py): the demo tenant's and the platform admin's
  local logins
  logins="$("$VENV/bin/python" - "${SECRETS_DIR:-$STATE/secrets}" <<'PY' 2>/dev/null || echo "  (no Airflow logins yet: run make onboard)"
import json, sys
from pathlib import Path
from aifactory import layout
from aifactory.tenants import load_tenant
pw = json.loads((Path(sys.argv[1]) / layout.AIRFLOW_USERS_FILE).read_text())
demo = load_tenant("demo").airflow_users[0]
for who, login in (("demo tenant", demo), ("platform admin", layout.PLATFORM_LOGIN), ("operator", layout.OPERATOR_LOGIN)):
    print(f"    {who:<15} {login} / {pw.get(login, '<not onboarded yet: make onboard>')}")
PY
)"
  cat <<EOF
  Airflow UI       http://127.0.0.1:$AIRFLOW_PORT   logins (from ${SECRETS_DIR:-$STATE/secrets}/airflow-users.json; REST: POST /auth/token):
$logins
  S3 endpoint      http://127.0.0.1:$S3_PORT   platform credential: $SECRETS_DIR/s3/platform.json (AWS_ACCESS_KEY_ID in stack.env), tenants': s3/<tenant>.json
  HPC login (sshd) 127.0.0.1:$SSH_PORT   user: $HPC_USER   key: $SSHDIR/id_ed25519   known_hosts: $SSHDIR/known_hosts
  Bastion          127.0.0.1:$BASTION_PORT   certificate logins only (CA: $SSH_CA_DIR); the factory's connections pass through it
  Data transfer    127.0.0.1:$DTN_PORT   staging and export (the connections' transfer_host), through the bastion
  Slurm            cluster $CLUSTER_NAME (slurmctld 6817, slurmd n1 17001 + n2 17002, slurmdbd 6819), HPC root $HPC_ROOT
  Metadata DB      postgresql://airflow@127.0.0.1:$PG_PORT/airflow   password: $SECRETS_DIR/postgres_airflow_password
  Executor         $executor$([ "$executor" = celery ] && echo "   broker: redis://127.0.0.1:$REDIS_PORT (password: $SECRETS_DIR/redis_password), workers: ${CELERY_WORKERS[*]}")   (make up EXECUTOR=local|celery)
  Environment      source $ENV_FILE
  Logs             $LOG
EOF
  return $rc
}

# restart NAME: one Airflow component, stopped first (a hung one too: TERM, then KILL) with all it
# left behind, then started again. The supervisor's only action; refuses every other component.
cmd_restart() {
  local name="${1:-}"
  printf '%s\n' "${AIRFLOW_PARTS[@]}" | grep -qx -- "$name" \
    || die "restart: '$name' is not an Airflow component (${AIRFLOW_PARTS[*]}); nothing else is restarted this way (make up)"
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  if alive "$name"; then stop_pid "$name" 5; fi  # hung: TERM, then KILL, with what it started
  start_airflow_part "$name"  # a dead one's leftovers are ended first (start_bg)
  say "restarted $name (pid $(pid_of "$name"))"
}

# orphans: processes of a component left by a dead predecessor (or of a component not running),
# which nothing will end before down; exit 1 naming them. The check after every fault scenario.
# Not the sshds (sessions opened before a restart live on, as they should), munged, nor a compute
# node's jobs (they outlive slurmd, as on a real cluster): down ends those.
cmd_orphans() {
  local c parts=() left
  for c in "${COMPONENTS[@]}"; do case "$c" in sshd* | munged | slurmd*) ;; *) parts+=("$c") ;; esac; done
  left="$(orphans "${parts[@]}")"
  [ -z "$left" ] && { say "no orphans"; return 0; }
  say "orphans (a dead component's leftovers; stack.sh up ends them before restarting it):"; echo "$left"
  return 1
}

main() {
  mkdir -p "$RUN" "$LOG" "$SSHDIR"
  procs_init
  # the state dir holds keys, the Airflow database and every task's log: root only, because the
  # tenants' Unix users live on this same machine (docs/security.md)
  chmod 0700 "$STATE"
  case "${1:-}" in
    setup) cmd_setup ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    restart) cmd_restart "${2:-}" ;;
    orphans) cmd_orphans ;;
    *) echo "usage: $0 {setup|up|down|status|orphans|restart <airflow component>}" >&2; exit 2 ;;
  esac
}
main "$@"
