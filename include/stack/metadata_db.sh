# shellcheck shell=bash
# Sourced by include/stack/stack.sh (uses its say/die/start_bg/stop_pid/alive/gen_secret helpers).
#
# Airflow's metadata database and the scale-out executor of the local stack:
#   - Postgres from Debian, always: SQLite serialises every writer behind one file lock, and
#     triggers sent while the scheduler works got HTTP 500 "database is locked" from the REST API.
#     SQLite stays for what runs alone (unit tests, dag.test()).
#   - Redis from Debian and two Celery workers, only with `make up EXECUTOR=celery` (the production
#     shape: CeleryExecutor); the default stays the LocalExecutor.
#
# The cluster lives in /var/lib/postgresql/aifactory, owned by the postgres user (as MariaDB's data
# is /var/lib/mysql): the state dir is root's alone (0700, docs/security.md), which no server
# running as another user could enter. It listens on 127.0.0.1 only; its Unix socket lies in its
# data dir (postgres and root only). The role `airflow` logs in with the password kept in
# $SECRETS_DIR/postgres_airflow_password. A fresh state dir (new password, new Fernet key), or
# another one than last time (a clean clone's CI run on this machine), gets a fresh database, as
# it got a fresh SQLite file before: the cluster remembers its state dir in $PG_DATA/aifactory-state.

PG_PORT="${AIFP_PG_PORT:-5432}"
PG_DATA="${AIFP_PG_DATA:-/var/lib/postgresql/aifactory}"
REDIS_PORT="${AIFP_REDIS_PORT:-6379}"
REDIS_CONF="${AIFP_REDIS_CONF:-/etc/redis/aifactory.conf}"
CELERY_WORKERS=(airflow-celery-worker-1 airflow-celery-worker-2)
# task slots per Celery worker (two workers: airflow.cfg's parallelism of 8 in all)
CELERY_CONCURRENCY="${AIFP_CELERY_CONCURRENCY:-4}"
EXECUTOR_FILE="$STATE/executor"  # the executor the stack runs: local | celery

pg_bin() { # the newest installed server's bin dir (Debian: /usr/lib/postgresql/<major>/bin)
  local d; d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -x "$d/postgres" ] || die "no PostgreSQL server installed (Debian: apt-get install postgresql)"
  printf '%s\n' "$d"
}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
pg_psql() { as_postgres "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DATA" -p "$PG_PORT" -U postgres "$@"; }

# The executor `up` starts: AIFP_EXECUTOR (make up EXECUTOR=...) if set, else the one that runs
# (so that a test fixture's plain `stack.sh up` keeps a Celery stack Celery), else local.
stack_executor() {
  local e="${AIFP_EXECUTOR:-$(cat "$EXECUTOR_FILE" 2>/dev/null || true)}"
  case "${e:-local}" in
    local | LocalExecutor) echo local ;;
    celery | CeleryExecutor) echo celery ;;
    *) die "unknown executor '$e': use EXECUTOR=local (the default) or EXECUTOR=celery" ;;
  esac
}

pg_password() { cat "$SECRETS_DIR/postgres_airflow_password"; }
redis_password() { cat "$SECRETS_DIR/redis_password"; }

up_postgres() {
  local bin fresh=0
  bin="$(pg_bin)"
  install -d -m 0700 "$SECRETS_DIR"
  [ -s "$SECRETS_DIR/postgres_airflow_password" ] || fresh=1
  gen_secret postgres_airflow_password 'import secrets; print(secrets.token_hex(24))'
  if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    say "creating the Postgres cluster in $PG_DATA (Airflow's metadata database)"
    install -d -m 0700 -o postgres -g postgres "$PG_DATA"
    as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 >"$LOG/postgres-initdb.log" 2>&1 \
      || { tail -20 "$LOG/postgres-initdb.log" >&2; die "initdb failed (log: $LOG/postgres-initdb.log)"; }
  fi
  # who may connect: postgres over the private socket (root via setpriv), airflow over TCP with its password
  local hba="local all postgres peer
host airflow airflow 127.0.0.1/32 scram-sha-256"
  if [ "$(cat "$PG_DATA/pg_hba.conf" 2>/dev/null)" != "$hba" ]; then
    printf '%s\n' "$hba" >"$PG_DATA/pg_hba.conf"
    chown postgres:postgres "$PG_DATA/pg_hba.conf"; chmod 600 "$PG_DATA/pg_hba.conf"
    if alive postgres; then kill -HUP "$(pid_of postgres)"; fi
  fi
  if ! alive postgres; then
    port_open "$PG_PORT" && die "127.0.0.1:$PG_PORT is taken by a server this stack did not start (Debian's own cluster? see pg_lsclusters; pg_ctlcluster <version> main stop)"
    # a postmaster.pid left by a killed server: postgres itself refuses a live one
    # synchronous_commit=off: a crash of the machine may lose the last commits, never consistency
    start_bg postgres setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/postgres" -D "$PG_DATA" \
      -c listen_addresses=127.0.0.1 -c port="$PG_PORT" -c unix_socket_directories="$PG_DATA" \
      -c max_connections=300 -c synchronous_commit=off -c logging_collector=off
    wait_for "Postgres on 127.0.0.1:$PG_PORT" 60 as_postgres "$bin/pg_isready" -q -h "$PG_DATA" -p "$PG_PORT"
    say "Postgres up on 127.0.0.1:$PG_PORT (data: $PG_DATA)"
  fi
  local pw; pw="$(pg_password)"
  if [ "$fresh" = 1 ] || [ "$(cat "$PG_DATA/aifactory-state" 2>/dev/null)" != "$STATE" ]; then
    # the database of another (or an earlier) state dir: its Fernet key and logins are not this stack's
    say "a fresh Airflow database for $STATE"
    pg_psql -d postgres -c 'DROP DATABASE IF EXISTS airflow WITH (FORCE)'
    printf '%s\n' "$STATE" >"$PG_DATA/aifactory-state"
  fi
  pg_psql -d postgres <<EOF
SELECT 'CREATE ROLE airflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'airflow') \gexec
ALTER ROLE airflow WITH LOGIN PASSWORD '$pw';
SELECT 'CREATE DATABASE airflow OWNER airflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'airflow') \gexec
EOF
}

stop_postgres() { # fast shutdown (SIGINT): open sessions are ended, nothing is lost
  local p i; p="$(pid_of postgres || true)"
  if running "$p"; then
    kill -INT "$p" 2>/dev/null || true
    for ((i = 0; i < 120; i++)); do running "$p" || break; sleep 0.25; done
    running "$p" || say "stopped postgres (pid $p)"
  fi
  stop_pid postgres
}

up_redis() {
  install -d -m 0700 "$SECRETS_DIR"
  gen_secret redis_password 'import secrets; print(secrets.token_hex(24))'
  # the password is in the file, not on the command line (tenants' users see every command line)
  install -d -m 0755 "$(dirname "$REDIS_CONF")"
  (umask 027; cat >"$REDIS_CONF.tmp" <<EOF
# Written by AI Factory Pipelines' include/stack/stack.sh: the Celery broker of the local stack.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
requirepass $(redis_password)
daemonize no
dir /var/lib/redis
# a broker, not a store: a restart loses queued messages, and the scheduler queues the tasks again
save ""
appendonly no
EOF
  )
  chown root:redis "$REDIS_CONF.tmp"; chmod 640 "$REDIS_CONF.tmp"; mv "$REDIS_CONF.tmp" "$REDIS_CONF"
  install -d -m 0750 -o redis -g redis /var/lib/redis
  if ! alive redis; then
    port_open "$REDIS_PORT" && die "127.0.0.1:$REDIS_PORT is taken by a server this stack did not start (Debian's redis-server service? stop it)"
    start_bg redis setpriv --reuid=redis --regid=redis --init-groups -- /usr/bin/redis-server "$REDIS_CONF"
    wait_for "Redis on 127.0.0.1:$REDIS_PORT" 30 \
      env REDISCLI_AUTH="$(redis_password)" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
    say "Redis up on 127.0.0.1:$REDIS_PORT (Celery broker)"
  fi
}

# stack.env's lines for the metadata database and the executor (write_env calls it)
metadata_env_lines() {
  local pw; pw="$(pg_password)"
  printf 'export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=%q\n' "postgresql+psycopg2://airflow:$pw@127.0.0.1:$PG_PORT/airflow"
  if [ "$(stack_executor)" = celery ]; then
    printf 'export AIRFLOW__CORE__EXECUTOR=%q\n' CeleryExecutor
    printf 'export AIRFLOW__CELERY__BROKER_URL=%q\n' "redis://:$(redis_password)@127.0.0.1:$REDIS_PORT/0"
    printf 'export AIRFLOW__CELERY__RESULT_BACKEND=%q\n' "db+postgresql://airflow:$pw@127.0.0.1:$PG_PORT/airflow"
    printf 'export AIRFLOW__CELERY__WORKER_CONCURRENCY=%q\n' "$CELERY_CONCURRENCY"
  else
    printf 'export AIRFLOW__CORE__EXECUTOR=%q\n' LocalExecutor
  fi
}

# The SSH pools: one per cluster spec, `ssh_<name>` (include/stack/pools.py, also compose's
# airflow-init), bounding how many tasks hold an SSH session to that login node at once; the
# pipeline's stage, train and export tasks run in them. Made at every up: a new metadata database
# (the move to Postgres) or a new cluster spec gets its pool before the scheduler needs it.
up_pools() {
  local f="$RUN/pools.json"
  "$VENV/bin/python" "$REPO/include/stack/pools.py" "$REPO/include/clusters" >"$f" \
    || die "could not list the SSH pools (include/stack/pools.py over include/clusters)"
  airflow pools import "$f" >>"$LOG/airflow-db.log" 2>&1 || { tail -20 "$LOG/airflow-db.log" >&2; die "airflow pools import failed"; }
}

# Celery workers (executor celery only): two, with distinct hostnames, each its own PID file; the
# first serves the task logs (one log server per machine: they share the log folder)
start_celery_worker() { # start_celery_worker airflow-celery-worker-<n> (also the supervisor's restart)
  local name="$1" n="${1##*-}"
  if [ "$n" = 1 ]; then
    start_bg "$name" airflow celery worker --celery-hostname "worker$n@%h" --concurrency "$CELERY_CONCURRENCY"
  else
    start_bg "$name" airflow celery worker --celery-hostname "worker$n@%h" --concurrency "$CELERY_CONCURRENCY" --skip-serve-logs
  fi
}

up_celery_workers() {
  local name
  for name in "${CELERY_WORKERS[@]}"; do start_celery_worker "$name"; done
  say "Celery workers up: ${CELERY_WORKERS[*]} (broker redis 127.0.0.1:$REDIS_PORT)"
}

stop_celery() {
  local c
  for c in "${CELERY_WORKERS[@]}"; do stop_pid "$c"; done
  stop_pid redis
}
