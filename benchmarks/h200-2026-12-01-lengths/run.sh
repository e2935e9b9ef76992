#!/bin/bash
# Issue 14's missing length-sweep rows and the topk re-time, one after another (never overlapping).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
F="--no-pack --fused cudnn --logits_matmul_dtype bfloat16 --steps 3 --warmup 1 --jobs 2"
end=$((SECONDS+555))
row() { name=$1; shift; left=$((end-SECONDS)); [ $left -gt 30 ] || return
  timeout $left python -m synth_jax.bench "$@" $F --json $OUT/$name.json > $OUT/$name.log 2>&1
  echo "$name rc=$? at $SECONDS s"; cat $OUT/$name.log | grep -v "^ *$" | tail -4; }
row D_1024 --types neg_l2,cosine --inputs_length 1024 --batch_size 64
row D_2048 --types neg_l2,cosine --inputs_length 2048 --batch_size 32
row D_4096 --types cosine --inputs_length 4096 --batch_size 16
row D_topk --types topk,vanilla
row D_8192 --types cosine --inputs_length 8192 --batch_size 8
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/device.txt
