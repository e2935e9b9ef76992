#!/bin/bash
# The full diagnostics sweep as a work queue: SLOTS processes share the GPU, each taking the next
# one-run part (base tasks first, then MQAR's kv-pair and width sweeps). Finished runs already in
# the tree's results.json.gz are kept (--skip_done); the results come back as one archive.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
SLOTS=${SLOTS:-12}; BUDGET=${BUDGET:-535}
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.92 / $SLOTS, 3))")
A=vanilla,random,fixed_random,dense,random+vanilla,orthogonal,frozen_gaussian,cosine,neg_l2,hyperbolic,rotary,topk,linear
SRC=results/h200-full-2026-12-01/full; W=/tmp/diagwork; rm -rf $W; mkdir -p $W/full $W/logs
cp $SRC/results.json.gz $W/full/ 2>/dev/null; [ -f $SRC/results.json ] && cp $SRC/results.json $W/full/
R="python3 -m synth_jax.diagnostics.run --preset full --attention $A --jobs_per_part 1 --skip_done --no-draw --out $W/full"
RA="$R --no-sweeps --tasks induction,mqar,selective_copy,overwrite,extrapolation"; RB="$R --tasks mqar"
{ for p in $(seq 1 52); do echo "A $p"; done; for p in $(seq 14 104) $(seq 1 13); do echo "B $p"; done; } > $W/queue
echo 0 > $W/next; start=$SECONDS; end=$((start+BUDGET))
take() { flock $W/next.lock bash -c "n=\$(cat $W/next); echo \$((n+1)) > $W/next; echo \$n"; }
slot() { local id=$1; while :; do n=$(take); line=$(sed -n "$((n+1))p" $W/queue); [ -n "$line" ] || return
    left=$((end-SECONDS)); [ $left -gt 20 ] || return; set -- $line
    if [ $1 = A ]; then cmd=$RA; else cmd=$RB; fi
    timeout $left $cmd --part $2 >> $W/logs/slot$id.log 2>&1; done; }
for s in $(seq 1 $SLOTS); do slot $s & done; wait
echo "queue: took $(cat $W/next) of $(wc -l < $W/queue) parts in $((SECONDS-start)) s" | tee $W/summary.txt
rm -f $W/full/results.json.lock; [ -f $W/full/results.json ] && rm -f $W/full/results.json.gz
grep -h "final accuracy" $W/logs/*.log | wc -l >> $W/summary.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $W/summary.txt
tar czf $OUT/diag.tgz -C $W full logs summary.txt; ls -la $OUT; cat $W/summary.txt
