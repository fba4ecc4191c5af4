#!/usr/bin/env bash
# The cluster check of model selection (docs/model-selection.md, "On a cluster"): a one-node Slurm cluster and a
# throwaway PostgreSQL server, both on 127.0.0.1 only, started and stopped by this script; a 2-task job array of
# `select --worker` processes sharing one study in PostgreSQL. Checks:
#   1. every piece of work (trial, rung) ran exactly once, every trial started;
#   2. the best trial and its validation accuracy equal a single worker's run of the same study (same seed, same trials);
#   3. a task cancelled mid-trial (scancel) has its trial finished by the other task.
# Prints per-trial journal overhead and trials per hour with 1 and 2 tasks. Needs root (or sudo) to install and start
# Debian's postgresql, slurm-wlm and munge when they are missing; takes about 10 minutes on 2 cores.
#   build/slurm-study.sh [--keep]   (--keep leaves the temp folder with the logs)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
keep=${1:-}
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for tool in slurmctld:slurm-wlm munged:munge; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/dbp-slurm-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  set +e
  trap - EXIT INT TERM
  if [ -n "${SLURM_CONF:-}" ]; then
    scancel --quiet -u "$(id -un)" 2>/dev/null
    for _ in $(seq 20); do squeue -h 2>/dev/null | grep -q . || break; sleep 1; done
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  [ -f "$work/munge/munged.pid" ] && kill "$(cat "$work/munge/munged.pid")" 2>/dev/null
  wait 2>/dev/null
  "$root/build/postgres.sh" stop "$work/pg" >/dev/null 2>&1
  if [ "$keep" != "--keep" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT INT TERM

echo "== CPU: $(lscpu | sed -n 's/^Model name: *//p')"
echo "== building the samples"
dotnet build src/Samples -c Release -v q -nologo >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
samples=$(ls "$root"/src/Samples/bin/Release/net10.0/*/Samples.dll | head -1)

echo "== PostgreSQL on 127.0.0.1"
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
storage=$("$root/build/postgres.sh" start "$work/pg" "$pg_port")
echo "   $storage"

echo "== munge and Slurm on 127.0.0.1"
mkdir -p "$work/munge" "$work/slurm/state" "$work/slurm/spool"
dd if=/dev/urandom bs=1 count=1024 of="$work/munge/munge.key" status=none
chmod 400 "$work/munge/munge.key"
if id munge >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then chown -R munge "$work/munge"; fi
munge_socket="$work/munge/munge.socket"
munged_user=(); if id munge >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then munged_user=(runuser -u munge --); fi
"${munged_user[@]}" munged --key-file="$work/munge/munge.key" --socket="$munge_socket" --pid-file="$work/munge/munged.pid" \
  --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed" --force
ctl_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
slurmd_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat >"$work/slurm/slurm.conf" <<EOF
ClusterName=dbp
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmdPort=$slurmd_port
SlurmUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$munge_socket
CredType=cred/munge
StateSaveLocation=$work/slurm/state
SlurmdSpoolDir=$work/slurm/spool
SlurmctldPidFile=$work/slurm/slurmctld.pid
SlurmdPidFile=$work/slurm/slurmd.pid
SlurmctldLogFile=$work/slurm/slurmctld.log
SlurmdLogFile=$work/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/slurm/slurm.conf"
slurmctld -D -f "$SLURM_CONF" >"$work/slurm/slurmctld.out" 2>&1 & pids+=($!)
slurmd -D -f "$SLURM_CONF" -N localhost >"$work/slurm/slurmd.out" 2>&1 & pids+=($!)
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && break
  sleep 1
done
sinfo -h -o "   partition %P: node %N %T, %c CPUs" || { cat "$work/slurm/slurmctld.log" "$work/slurm/slurmd.log"; exit 1; }

# The study: 2,000 shipped Fashion-MNIST images, 6 trials, rungs of 1 and 2 epochs (η 3), seed 3.
study_args=(select --limit 2000 --trials 6 --min-epochs 1 --max-epochs 2 --seed 3 --time 30m)

submit() { # NAME TASKS [extra worker args...]: writes the job array with `select --slurm`, submits it; prints the job id
  local name=$1 tasks=$2; shift 2
  dotnet "$samples" "${study_args[@]}" "$@" --slurm "$work/$name/worker.sh" --workers "$tasks" --storage "$storage" --study "$name" \
    --work "$work/$name/work" --report "$work/$name" >/dev/null
  sbatch --parsable --chdir="$root" "$work/$name/worker.sh"
}

wait_for() { # JOB: waits until the job has left the queue
  while squeue -h -j "$1" 2>/dev/null | grep -q .; do sleep 2; done
}

rows() { # STUDY SQL
  PGOPTIONS="-c search_path=dbp_study_$1" psql "$storage" -At -c "$2"
}

failures=0
check() { # DESCRIPTION CONDITION-RESULT(0/1)
  if [ "$2" -eq 0 ]; then echo "   ok: $1"; else echo "   FAILED: $1"; failures=$((failures + 1)); fi
}

echo "== 1 worker, no scheduler: the reference run"
start=$(date +%s.%N)
dotnet "$samples" "${study_args[@]}" --journal "$work/single.sqlite" --report "$work/single" >"$work/single.log" 2>&1 || { cat "$work/single.log"; exit 1; }
single_seconds=$(echo "$(date +%s.%N) - $start" | bc)
single_best=$(python3 -c "import json; t=[x for x in json.load(open('$work/single/leaderboard.json')) if x['State']=='Completed']; b=max(t, key=lambda x: x['MetricValue']); print(b['Trial'], b['ValidationAccuracy'])")
single_rungs=$(python3 -c "import sqlite3; print(sqlite3.connect('$work/single.sqlite').execute('SELECT count(*) FROM reports').fetchone()[0])")
echo "   best trial and validation accuracy: $single_best; $single_rungs rung results in ${single_seconds%.*} s"

echo "== 1 worker on PostgreSQL, no scheduler: the journal's cost against SQLite"
start=$(date +%s.%N)
dotnet "$samples" "${study_args[@]}" --storage "$storage" --study single_pg --work "$work/single_pg/work" --report "$work/single_pg" >"$work/single_pg.log" 2>&1 \
  || { cat "$work/single_pg.log"; exit 1; }
single_pg_seconds=$(echo "$(date +%s.%N) - $start" | bc)
check "the same study on PostgreSQL ends with the same best trial and accuracy" \
  "$( [ "$(python3 -c "import json; t=[x for x in json.load(open('$work/single_pg/leaderboard.json')) if x['State']=='Completed']; b=max(t, key=lambda x: x['MetricValue']); print(b['Trial'], b['ValidationAccuracy'])")" = "$single_best" ]; echo $?)"

echo "== 2-task job array sharing the study in PostgreSQL"
start=$(date +%s.%N)
job=$(submit pair 2)
wait_for "$job"
pair_seconds=$(echo "$(date +%s.%N) - $start" | bc)
for task in 0 1; do echo "   task $task: $(grep -o 'This worker: [0-9]* rung results' "$work/pair/task-$task.log"); $(head -1 "$work/pair/task-$task.log" | cut -c1-90)"; done
check "every task's log names its Slurm array task" "$(grep -q 'Slurm array task 0 of job' "$work/pair/task-0.log" && grep -q 'Slurm array task 1 of job' "$work/pair/task-1.log"; echo $?)"
check "both tasks did work" "$(grep -q 'This worker: [1-9]' "$work/pair/task-0.log" && grep -q 'This worker: [1-9]' "$work/pair/task-1.log"; echo $?)"
check "every trial started exactly once" "$( [ "$(rows pair 'SELECT count(*) FROM reports WHERE rung = 0')" = 6 ] && [ "$(rows pair 'SELECT count(DISTINCT trial) FROM reports WHERE rung = 0')" = 6 ]; echo $?)"
# Each worker also prints the other's results as it sees them: count what each says it ran.
logged=$(cat "$work/pair/task-"*.log | sed -n 's/.*This worker: \([0-9]*\) rung results.*/\1/p' | paste -sd+ | bc)
check "every piece of work ran once: $logged rung results run by the tasks, $(rows pair 'SELECT count(*) FROM reports') in the journal, no claim left" \
  "$( [ "$logged" = "$(rows pair 'SELECT count(*) FROM reports')" ] && [ "$(rows pair 'SELECT count(*) FROM claims')" = 0 ]; echo $?)"
dotnet "$samples" "${study_args[@]}" --summarize --storage "$storage" --study pair --work "$work/pair/work" --report "$work/pair/report" >"$work/pair/summary.log" 2>&1 \
  || { cat "$work/pair/summary.log"; exit 1; }
pair_best=$(python3 -c "import json; t=[x for x in json.load(open('$work/pair/report/leaderboard.json')) if x['State']=='Completed']; b=max(t, key=lambda x: x['MetricValue']); print(b['Trial'], b['ValidationAccuracy'])")
echo "   best trial and validation accuracy: $pair_best; report from the study: $(ls "$work/pair/report" | tr '\n' ' ')"
check "the best trial and its accuracy equal the single worker's ($single_best)" "$( [ "$pair_best" = "$single_best" ]; echo $?)"
if [ "$pair_best" != "$single_best" ]; then
  echo "   promotions: single $(python3 -c "import sqlite3; print(sqlite3.connect('$work/single.sqlite').execute('SELECT group_concat(trial) FROM reports WHERE rung = 1').fetchone()[0])"), pair $(rows pair "SELECT string_agg(trial::text, ',') FROM reports WHERE rung = 1")"
fi

echo "== a task cancelled mid-trial"
job=$(submit killed 2 --lease 20s)
# Cancel a task while it holds a claim (it is mid-trial), once the study is under way (a rung result is in).
for _ in $(seq 900); do
  if [ "$(rows killed 'SELECT count(*) FROM reports' 2>/dev/null || echo 0)" -ge 1 ] && [ "$(rows killed 'SELECT count(*) FROM claims' 2>/dev/null || echo 0)" -ge 1 ]; then
    break
  fi
  sleep 0.5
done
victim=$(rows killed "SELECT worker FROM claims ORDER BY trial LIMIT 1")
victim_trial=$(rows killed "SELECT trial FROM claims ORDER BY trial LIMIT 1")
victim_pid=$(echo "$victim" | cut -d/ -f2)
victim_task=$(grep -l "/$victim_pid, Slurm array task" "$work/killed/"task-*.log | sed 's/.*task-\([0-9]*\).log/\1/' | head -1)
echo "   cancelling array task $victim_task (worker $victim, trial $victim_trial in hand)"
scancel "${job}_$victim_task"
wait_for "$job"
other=$((1 - victim_task))
# The victim may report trial $victim_trial's rung in the moment before the cancel arrives and hold its next claim when it
# dies: what must hold is that the other task takes over the work the cancelled one held.
taken_over=$(grep -o "Trial [0-9]*'s rung [0-9]* was claimed by a worker that stopped" "$work/killed/task-$other.log" | head -1)
echo "   task $other: ${taken_over:-no take-over in its log}"
check "the cancelled task's work was taken over by task $other" "$( [ -n "$taken_over" ]; echo $?)"
check "every trial of that study finished its rungs, no claim left" \
  "$( [ "$(rows killed 'SELECT count(DISTINCT trial) FROM reports WHERE rung = 0')" = 6 ] && [ "$(rows killed 'SELECT count(*) FROM claims')" = 0 ] && [ "$(rows killed "SELECT count(*) FROM trials WHERE state IN ('Running', 'Failed')")" = 0 ]; echo $?)"

echo "== figures (CPU: $(lscpu | sed -n 's/^Model name: *//p'))"
echo "   single worker: 6 trials in ${single_seconds%.*} s = $(echo "6 * 3600 / $single_seconds" | bc) trials/hour (SQLite), ${single_pg_seconds%.*} s on PostgreSQL"
echo "   2-task array:  6 trials in ${pair_seconds%.*} s = $(echo "6 * 3600 / $pair_seconds" | bc) trials/hour (scheduling included)"
for log in "$work/single.log" "$work/single_pg.log" "$work/pair/task-0.log" "$work/pair/task-1.log"; do
  echo "   journal time per rung result ($(basename "$(dirname "$log")")/$(basename "$log")): $(grep -o 'journal [0-9.]* ms per rung result' "$log" || echo 'not printed')"
done
if [ "$failures" -ne 0 ]; then
  echo "slurm-study: $failures check(s) FAILED"
  [ "$keep" = "--keep" ] || echo "(run with --keep to keep the logs)"
  exit 1
fi
echo "slurm-study: all checks passed"
