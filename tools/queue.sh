#!/bin/bash
# Runs a work queue of diagnostic runs on one GPU, from the repository root:
#
#   tools/queue.sh QUEUE RESULTS_DIR     e.g. tools/queue.sh queue.txt results/h200-full-2026-12-01
#   SLOTS=12 BUDGET=530 MIN_LEFT=120     (environment, defaults shown)
#
# QUEUE holds lines `SUBDIR ARGS...` (from tools/make_queue.py, or written by hand), each run as
# `synth-jax diagnose --preset full --jobs_per_part 1 --skip_done --no-draw --out WORK/SUBDIR
# ARGS...`. SLOTS processes each take the next line until the queue or BUDGET seconds run out;
# runs already in RESULTS_DIR/SUBDIR/results.json.gz (a grid: in each of its cells'
# results.json.gz, lines with `--preset robust`) are skipped; the results come back as
# $OUT/diag.tgz. JAX's persistent compilation cache is shared by the processes, so runs that
# differ only in seed or learning rate (arguments of the compiled program) compile once.
# MPS=1 runs the slots under NVIDIA's Multi-Process Service (their kernels then share the GPU
# at once instead of taking turns), when its daemon starts and a JAX process runs under it;
# otherwise the slots run as before. $OUT/diag.tgz's logs/gpu.csv samples the GPU's load.
QUEUE=${1:?usage: tools/queue.sh QUEUE RESULTS_DIR}
SRC=${2:?usage: tools/queue.sh QUEUE RESULTS_DIR}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
SLOTS=${SLOTS:-12}; BUDGET=${BUDGET:-530}
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.92 / $SLOTS, 3))")
W=/tmp/diagwork; rm -rf $W; mkdir -p $W/logs
for d in $(awk '{print $1}' $QUEUE | sort -u); do  # a grid's SUBDIR holds one per cell
  mkdir -p $W/$d
  [ -d $SRC/$d ] && (cd $SRC/$d && find . -name results.json.gz) | while read gz; do
    mkdir -p $W/$d/$(dirname $gz); gunzip -c $SRC/$d/$gz > $W/$d/${gz%.gz}; done
done
start_mps() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p /tmp/mps /tmp/mpslog && nvidia-cuda-mps-control -d && timeout 60 python3 -c \
    'import jax; print("MPS client ok:", float(jax.numpy.ones(4).sum()), jax.devices())' \
    >> $W/logs/mps.log 2>&1 && MPS_STARTED=1 && return
  echo "MPS unusable: running without it" >> $W/logs/mps.log; echo quit | nvidia-cuda-mps-control
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; }
[ "${MPS:-0}" = 1 ] && start_mps
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 \
  > $W/logs/gpu.csv 2>&1 & SAMPLER=$!
# BUDGET counts from the script's start (SECONDS is 0 there): unpacking and MPS come out of it.
cp $QUEUE $W/queue; echo 0 > $W/next; start=$SECONDS; end=$BUDGET
R="python3 -m synth_jax.diagnostics.run --preset full --jobs_per_part 1 --skip_done --no-draw"
take() { flock $W/next.lock bash -c "n=\$(cat $W/next); echo \$((n+1)) > $W/next; echo \$n"; }
# A run takes 65-115 s, a grid's group 80-305 s (H100, 2026-12-07): a slot starts none with less
# than MIN_LEFT seconds to go.
MIN_LEFT=${MIN_LEFT:-120}
slot() { local id=$1; while [ $((end-SECONDS)) -gt $MIN_LEFT ]; do
    n=$(take); line=$(sed -n "$((n+1))p" $W/queue); [ -n "$line" ] || return
    set -- $line; out=$1; shift
    echo "queue line $((n+1)) start $((SECONDS-start)) s" >> $W/logs/slot$id.log
    timeout $((end-SECONDS)) $R --out $W/$out "$@" >> $W/logs/slot$id.log 2>&1
    echo "queue line $((n+1)) end $((SECONDS-start)) s rc $?" >> $W/logs/slot$id.log; done; }
for s in $(seq 1 $SLOTS); do slot $s & done; for s in $(jobs -p); do
  [ $s = $SAMPLER ] || wait $s; done; kill $SAMPLER 2> /dev/null
[ -n "$MPS_STARTED" ] && echo quit | nvidia-cuda-mps-control
started=$(cat $W/logs/*.log | grep -c "^queue line .* start")
echo "queue: started $started of $(wc -l < $W/queue) lines in $((SECONDS-start)) s" \
  | tee $W/summary.txt
find $W -name 'results.json.lock' -o -name 'results.json.tmp' | xargs rm -f
echo "runs finished: $(grep -h 'final accuracy' $W/logs/*.log | wc -l)" >> $W/summary.txt
tar czf $OUT/diag.tgz -C $W --exclude=next --exclude=next.lock .; ls -la $OUT; cat $W/summary.txt
