#!/bin/bash
# Call 2: seeds 1 and 2 of the headline runs, then MQAR's kv-pair and width sweeps for six
# variants, as a work queue of one-run parts shared by SLOTS processes on the GPU.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
SLOTS=${SLOTS:-12}; BUDGET=${BUDGET:-530}
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.92 / $SLOTS, 3))")
SRC=results/h200-full-2026-12-01; W=/tmp/diagwork; rm -rf $W; mkdir -p $W/full $W/seed1 $W/seed2 $W/logs
cp $SRC/full/results.json $W/full/
R="python3 -m synth_jax.diagnostics.run --preset full --jobs_per_part 1 --skip_done --no-draw"
S="--no-sweeps --tasks mqar,induction --attention vanilla,orthogonal,frozen_gaussian"
K="--tasks mqar --attention vanilla,random,orthogonal,frozen_gaussian,neg_l2,linear"
{ for p in 1 2 3 4; do echo "seed1 $S --seed 1 --part $p"; echo "seed2 $S --seed 2 --part $p"; done
  for p in $(seq 7 48); do echo "full $K --part $p"; done; } > $W/queue
echo 0 > $W/next; start=$SECONDS; end=$((start+BUDGET))
take() { flock $W/next.lock bash -c "n=\$(cat $W/next); echo \$((n+1)) > $W/next; echo \$n"; }
slot() { local id=$1; while :; do n=$(take); line=$(sed -n "$((n+1))p" $W/queue); [ -n "$line" ] || return
    left=$((end-SECONDS)); [ $left -gt 20 ] || return; set -- $line; out=$1; shift
    timeout $left $R --out $W/$out "$@" >> $W/logs/slot$id.log 2>&1; done; }
for s in $(seq 1 $SLOTS); do slot $s & done; wait
echo "queue: took $(cat $W/next) of $(wc -l < $W/queue) parts in $((SECONDS-start)) s" | tee $W/summary.txt
rm -f $W/*/results.json.lock $W/*/results.json.tmp
grep -h "final accuracy" $W/logs/*.log | wc -l >> $W/summary.txt
tar czf $OUT/diag.tgz -C $W full seed1 seed2 logs summary.txt; ls -la $OUT; cat $W/summary.txt
