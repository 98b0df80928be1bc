# shellcheck shell=bash
# Sourced by include/stack/stack.sh (needs RUN, LOG, STATE, say, die): every process the stack starts can
# be found again and stopped, whatever it renames itself to and whoever it is reparented to.
#
# Measured here (Airflow 3.3, Debian 12, kernel 6.x): a pid file finds the leader only. Airflow's
# LocalExecutor workers ("airflow worker -- LocalExecutor: <idle>"), its serve-logs and the
# api-server rename themselves with setproctitle, which also overwrites the memory that
# /proc/<pid>/environ reads (it shows 0 variables for them): an environment marker cannot find
# them. Two markers can, and both are inherited by every fork and exec:
#   - a cgroup (v2) per component, $CG_BASE/<component>, where a writable cgroup2 hierarchy exists
#     (here: /sys/fs/cgroup/unified); a process leaves it only by being moved by root, and
#     cgroup.kill ends all of it at once (no race with a process that forks while it is killed);
#   - the component's session: start_bg starts each in its own (setsid) and records it in
#     $RUN/<component>.sid with the leader's start time. Airflow, Celery, moto, Slurm and MariaDB
#     never call setsid (Celery only with --detach, unused); Postgres' backends and sshd's
#     connections do, so those two are found by their cgroup only.
# The union of both is a component's members. A session id cannot be reused while one member of it
# lives; once all are gone the number may go to an unrelated process, so the recorded start time
# of the leader must match whenever a process of that pid exists.

CG_BASE=""  # the stack's cgroup: <cgroup2 mount>/aifp-<hash of the state dir>; empty: sessions only

procs_init() {
  local mnt id
  id="aifp-$(printf '%s' "$STATE" | sha256sum | cut -c1-12)"
  for mnt in /sys/fs/cgroup /sys/fs/cgroup/unified; do
    [ -f "$mnt/cgroup.controllers" ] || continue  # a cgroup2 mount
    if [ -d "$mnt/$id" ] || mkdir "$mnt/$id" 2>/dev/null; then CG_BASE="$mnt/$id"; return 0; fi
  done
  return 0
}

start_time() { # the process's start time (clock ticks since boot, /proc/<pid>/stat field 22)
  local stat; stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"  # the command name may hold spaces and parentheses
  # shellcheck disable=SC2086
  set -- $stat
  printf '%s\n' "${20}"
}

# cg_join NAME: move the calling (sub)shell into NAME's cgroup; what it execs and forks stays there
cg_join() {
  [ -n "$CG_BASE" ] || return 0
  mkdir -p "$CG_BASE/$1" && echo "$BASHPID" >"$CG_BASE/$1/cgroup.procs"
}

record_session() { # record_session NAME PID: PID leads NAME's session
  local t; t="$(start_time "$2")" || return 0
  printf '%s %s\n' "$2" "$t" >"$RUN/$1.sid"
}

# members NAME: the live pids of NAME (its cgroup and its session), zombies left out
members() {
  local name="$1" sid t now pid
  {
    if [ -n "$CG_BASE" ] && [ -f "$CG_BASE/$name/cgroup.procs" ]; then cat "$CG_BASE/$name/cgroup.procs"; fi
    if [ -s "$RUN/$name.sid" ]; then
      read -r sid t <"$RUN/$name.sid"
      now="$(start_time "$sid" || true)"
      if [ -z "$now" ] || [ "$now" = "$t" ]; then  # the leader lives, or died: never a reused number
        ps -e -o pid=,sid= | awk -v s="$sid" '$2 == s { print $1 }'
      fi
    fi
  } | sort -un | while read -r pid; do
    [ -r "/proc/$pid/stat" ] && [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ] && echo "$pid"
  done
  return 0
}

describe() { # describe PID...: one line each, "pid  command line" (as it renamed itself)
  local p
  for p in "$@"; do printf '    %s  %s\n' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-150)"; done
}

# reap NAME [GRACE]: TERM every member of NAME, wait up to GRACE seconds (default 10), then KILL
# whatever is left (cgroup.kill where there is one); says what it had to KILL. Fails, naming them,
# if anything of NAME still lives 5 s after the KILL.
reap() {
  local name="$1" grace="${2:-10}" pids i
  pids="$(members "$name")"
  [ -z "$pids" ] && return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < grace * 4; i++)); do pids="$(members "$name")"; [ -z "$pids" ] && return 0; sleep 0.25; done
  say "$name: $(wc -w <<<"$pids") process(es) ignored SIGTERM for ${grace}s; killing them (SIGKILL):"
  # shellcheck disable=SC2086
  describe $pids
  if [ -n "$CG_BASE" ] && [ -f "$CG_BASE/$name/cgroup.kill" ]; then echo 1 >"$CG_BASE/$name/cgroup.kill" 2>/dev/null || true; fi
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do pids="$(members "$name")"; [ -z "$pids" ] && return 0; sleep 0.25; done
  say "ERROR: $name: still running after SIGKILL:"
  # shellcheck disable=SC2086
  describe $pids
  return 1
}

# reap_leftovers NAME: before a new NAME starts, what the dead one left behind (its renamed,
# reparented children: a SIGKILLed scheduler's LocalExecutor workers and log server) is ended
reap_leftovers() {
  local name="$1" pids
  pids="$(members "$name")"
  [ -z "$pids" ] && { rm -f "$RUN/$name.sid"; return 0; }
  say "$name died and left $(wc -w <<<"$pids") process(es) behind; ending them:"
  # shellcheck disable=SC2086
  describe $pids
  reap "$name" 5 || { say "ERROR: leftovers of $name survive SIGKILL (above); end them by hand, then $0 up"; return 1; }
  rm -f "$RUN/$name.sid"
}

# survivors NAME...: every live member of the named components and of any cgroup of this stack,
# as "component: pid command line"; prints nothing when nothing is left
survivors() {
  local name pids d
  local names=("$@")
  if [ -n "$CG_BASE" ]; then
    for d in "$CG_BASE"/*/; do [ -d "$d" ] && names+=("$(basename "$d")"); done
  fi
  printf '%s\n' "${names[@]}" | sort -u | while read -r name; do
    pids="$(members "$name")"
    [ -z "$pids" ] && continue
    echo "  $name:"
    # shellcheck disable=SC2086
    describe $pids
  done
}

# ---------------------------------------------------------------------------------------------
# the components: a pid file per component in $RUN, its log in $LOG
# ---------------------------------------------------------------------------------------------
pid_of() { local f="$RUN/$1.pid"; [ -s "$f" ] && cat "$f"; }
# running PID: PID is a live process. A zombie is not, though kill -0 succeeds on it: where PID 1
# reaps no orphans (here, and in CI's container: measured), a SIGKILLed component stays a zombie
running() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
alive() { local p; p="$(pid_of "$1" || true)"; [ -n "$p" ] && running "$p"; }

# adopt NAME: a live component started before sessions were recorded gets its .sid file (the
# session it leads, as start_bg made it); one that leads no session is left as it is
adopt() {
  local p
  [ -s "$RUN/$1.sid" ] && return 0
  p="$(pid_of "$1" || true)"
  [ -n "$p" ] && running "$p" && [ "$(ps -o sid= -p "$p" | tr -d ' ')" = "$p" ] && record_session "$1" "$p"
  return 0
}

# start NAME CMD...: run CMD detached in its own session and cgroup (procs.sh), logging to
# $LOG/NAME.log; what a dead NAME left behind is ended first
start_bg() {
  local name="$1" p; shift
  if alive "$name"; then adopt "$name"; return 0; fi
  # a compute node's jobs (slurmstepd) outlive its slurmd, as on a real cluster: down ends them
  case "$name" in slurmd-*) ;; *) reap_leftovers "$name" || die "cannot start $name: its leftovers live on (above)" ;; esac
  ( cg_join "$name"; exec setsid "$@" ) >>"$LOG/$name.log" 2>&1 < /dev/null &
  p=$!
  echo "$p" >"$RUN/$name.pid"
  record_session "$name" "$p"
}

# stop NAME [GRACE]: TERM the leader's process group (setsid made it a leader), wait up to GRACE
# seconds (default 15) for the leader, then every member left (procs.sh: renamed, reparented):
# TERM, then KILL. Fails, naming them, if anything survives the KILL.
stop_pid() {
  local name="$1" grace="${2:-15}" p i
  p="$(pid_of "$name" || true)"
  if ! running "$p"; then  # the leader died (a zombie or gone): name what it left behind, then end it
    reap_leftovers "$name" || return 1
    rm -f "$RUN/$name.pid"
    return 0
  fi
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < grace * 4; i++)); do running "$p" || break; sleep 0.25; done
  kill -KILL -- "-$p" 2>/dev/null || true
  kill -KILL "$p" 2>/dev/null || true
  say "stopped $name (pid $p)"
  reap "$name" 5 || return 1
  rm -f "$RUN/$name.pid" "$RUN/$name.sid"
}


# descendants PID: PID and every process below it
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '{ parent[$1] = $2 }
    END { for (p in parent) { q = p; while (q != "" && q > 1) { if (q == root) { print p; break }; q = parent[q] } } }'
}

# orphans NAME...: what the check after a fault prints: members of each component that are not
# below its live leader (a dead predecessor's leftovers, or all of a component that is not running)
orphans() {
  local name leader pids desc p left
  for name in "$@"; do
    pids="$(members "$name")"
    [ -z "$pids" ] && continue
    desc=""
    leader="$(pid_of "$name" || true)"
    if running "$leader"; then desc=" $(descendants "$leader" | tr '\n' ' ') "; fi
    left=()
    for p in $pids; do [[ "$desc" == *" $p "* ]] || left+=("$p"); done
    [ "${#left[@]}" = 0 ] && continue
    echo "  $name (leader ${leader:-none}):"
    describe "${left[@]}"
  done
}
