#!/bin/bash
# Issue 23: every variant at flash memory. Rows one after another (--jobs 2 overlaps only the
# host-side set-up of the next row); the old tree (.old: `git archive e8ab1d3 synth_jax gin`)
# gives "before". Usage: run.sh PART, PART one of: 512, long, all (what matters most, one call).
# Parts r512, r8192a, r8192b: the rows the first session could not reach (JOBS=3 overlaps more set-up).
# Parts still to run (2026-12-08): s13a (three rows of 8192), s13b (the rest of 2048; s12a/s12b
# split the same rows the other way), p10 (profiles by op); s9, s10 and s11 ran (BENCHMARKS.md
# seventh to ninth runs).
# 2026-12-07 it ran once, on an H100, as `BUDGET=230 run.sh all` (BENCHMARKS.md, issue 23).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
F="--no-pack --logits_matmul_dtype bfloat16 --steps 3 --warmup 1 --jobs ${JOBS:-2}"
end=$((SECONDS+${BUDGET:-540}))
row() { name=$1; tree=$2; shift 2; left=$((end-SECONDS)); [ $left -gt 40 ] || { echo "$name skipped"; return; }
  (cd $tree && PYTHONPATH=/tmp/site:$PWD timeout $left python -m synth_jax.bench "$@" $F \
     --json $OUT/$name.json > $OUT/$name.log 2>&1); echo "$name rc=$? at $SECONDS s"
  grep -v "^ *$" $OUT/$name.log | tail -${ROWS:-4}; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
case $1 in
512)
  ROWS=9 row A_after . --types vanilla,random,orthogonal,neg_l2,dense,hyperbolic,topk,linear --fused cudnn
  ROWS=4 row A_before .old --types vanilla,random,orthogonal --fused cudnn
  ROWS=2 row A_blockwise . --types vanilla --fused blockwise ;;
long)
  ROWS=9 row B_8192 . --types vanilla,neg_l2,dense,hyperbolic,topk,linear,orthogonal,factorized_dense --fused cudnn --inputs_length 8192 --batch_size 8
  ROWS=9 row B_2048 . --types vanilla,neg_l2,dense,hyperbolic,topk --fused cudnn --inputs_length 2048 --batch_size 32 ;;
all)
  ROWS=7 row A_after . --types vanilla,neg_l2,dense,hyperbolic,topk --fused cudnn
  ROWS=2 row A_before .old --types vanilla --fused cudnn
  ROWS=7 row B_8192 . --types vanilla,neg_l2,hyperbolic,topk,dense --fused cudnn --inputs_length 8192 --batch_size 8
  ROWS=4 row A_rest_after . --types orthogonal,random --fused cudnn
  ROWS=4 row A_rest_before .old --types orthogonal,random --fused cudnn ;;
r512)  # second session: the 512 rows still missing, with vanilla again as this machine's baseline
  ROWS=7 row A2_after . --types vanilla,hyperbolic,topk,random,orthogonal --fused cudnn
  ROWS=3 row A2_blockwise . --types vanilla --fused blockwise
  ROWS=5 row A2_before .old --types vanilla,random,orthogonal --fused cudnn ;;
r8192a)
  ROWS=9 row B2_8192a . --types vanilla,neg_l2,dense,hyperbolic,topk,factorized_dense,random --fused cudnn --inputs_length 8192 --batch_size 8 ;;
r8192b)
  ROWS=9 row B2_8192b . --types orthogonal,linear,fixed_random,factorized_random,frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 8192 --batch_size 8 ;;
last)  # one call's worth: the 512 rows of the slowest variants, then 8192
  ROWS=5 row A3_after . --types vanilla,hyperbolic,topk --fused cudnn
  ROWS=7 row B3_8192 . --types vanilla,neg_l2,hyperbolic,topk,dense --fused cudnn --inputs_length 8192 --batch_size 8 ;;
s4)  # third session: before/after of the variants that must not slow, vanilla blockwise, 8192's rest
  ROWS=5 row A4_after . --types vanilla,random,orthogonal --fused cudnn
  ROWS=5 row A4_before .old --types vanilla,random,orthogonal --fused cudnn
  ROWS=3 row A4_blockwise . --types vanilla --fused blockwise
  ROWS=4 row B4_8192 . --types dense,topk --fused cudnn --inputs_length 8192 --batch_size 8 ;;
prof)  # where the blockwise path's time goes (device time by kernel in each row's JSON 'profile')
  ROWS=4 row P_cudnn . --types vanilla --fused cudnn --profile /tmp/prof_cudnn
  ROWS=5 row P_blockwise . --types vanilla,hyperbolic,topk --fused blockwise --profile /tmp/prof_blockwise ;;
s5)  # fifth session: the profile (time by model part), hyperbolic and topk materialized on the
  # same machine ('fast'), then 8192's rest
  ROWS=12 row P_cudnn . --types vanilla --fused cudnn --profile /tmp/prof_cudnn
  ROWS=40 row P_blockwise . --types vanilla,hyperbolic,topk --fused blockwise --profile /tmp/prof_blockwise
  ROWS=4 row R_fast . --types hyperbolic,topk --fused fast
  ROWS=9 row B5_8192 . --types orthogonal,linear,fixed_random,factorized_random,frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 8192 --batch_size 8 ;;
s6)  # sixth session: topk's first pass by selection (after) against its sort (.old2: `git archive
  # 4960b1a synth_jax gin`), vanilla cuDNN as this machine's baseline; then 8192 one row at a time
  ROWS=6 row T6_after . --types vanilla,topk --fused cudnn
  ROWS=3 row T6_before .old2 --types topk --fused cudnn
  F=${F/--jobs 2/--jobs 1}
  ROWS=5 row B6_8192 . --types orthogonal,factorized_random,linear --fused cudnn --inputs_length 8192 --batch_size 8 ;;
s7)  # next: 8192's rest one row at a time (s6 reached none of it), then where topk's time goes now
  F=${F/--jobs 2/--jobs 1}
  ROWS=5 row B7_8192a . --types factorized_random,orthogonal,linear --fused cudnn --inputs_length 8192 --batch_size 8
  ROWS=5 row B7_8192b . --types frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 8192 --batch_size 8
  ROWS=40 row P7_topk . --types topk --fused cudnn --profile /tmp/prof_topk ;;
s8)  # seventh session: hyperbolic's logits as one matmul of ball features (after) against the
  # expanded form (.old3: `git archive 24e9656 synth_jax gin`), blockwise ('cudnn' picks it) and
  # materialized ('fast'), vanilla cuDNN as this machine's baseline; then 8192 one row at a time.
  # First the top-k forms of topk's first pass at its T5-base shape (benchmarks/selection/)
  PYTHONPATH=/tmp/site:$PWD timeout 120 python benchmarks/selection/selection_time.py 5 \
    128,12,512,520 > $OUT/S8_selection.txt 2>&1; cat $OUT/S8_selection.txt
  ROWS=6 row H8_after . --types vanilla,hyperbolic --fused cudnn
  ROWS=3 row H8_before .old3 --types hyperbolic --fused cudnn
  ROWS=3 row H8_fast_after . --types hyperbolic --fused fast
  F=${F/--jobs 2/--jobs 1}
  ROWS=3 row H8_8192 . --types hyperbolic --fused cudnn --inputs_length 8192 --batch_size 8
  ROWS=5 row B8_8192a . --types factorized_random,orthogonal,linear --fused cudnn --inputs_length 8192 --batch_size 8
  ROWS=5 row B8_8192b . --types frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 8192 --batch_size 8 ;;
s9)  # next: topk's first pass by chunks and hyperbolic's present (head_dim + 5 wide) features
  # (after, profiled: device time by kernel and op) against passes over the row and the expanded
  # form (.old3, 24e9656), vanilla cuDNN as the baseline and vanilla blockwise profiled, the top-k
  # forms at T5-base's shape; then 8192's rest as far as the budget goes (s10 has all of it)
  PYTHONPATH=/tmp/site:$PWD timeout 120 python benchmarks/selection/selection_time.py 5 \
    128,12,512,520 > $OUT/S9_selection.txt 2>&1; cat $OUT/S9_selection.txt
  ROWS=60 row T9_after . --types vanilla,topk,hyperbolic --fused cudnn --profile /tmp/prof9
  ROWS=4 row T9_before .old3 --types topk,hyperbolic --fused cudnn
  ROWS=30 row P9_blockwise . --types vanilla --fused blockwise --profile /tmp/prof9b
  F=${F/--jobs 2/--jobs 1}
  ROWS=5 row B9_8192a . --types factorized_random,orthogonal,linear --fused cudnn --inputs_length 8192 --batch_size 8 ;;
s10)  # the 8192 rows no call has reached. s5's ran out of memory beside queued workers holding the
  # random synthesizers' 38.6 GB maps; none of these six has a quadratic parameter, so two workers
  # (one compiling while the other times) fit, and the six rows fit one call
  ROWS=6 row B10_8192a . --types vanilla,factorized_random,orthogonal,linear --fused cudnn --inputs_length 8192 --batch_size 8
  ROWS=5 row B10_8192b . --types frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 8192 --batch_size 8 ;;
p10)  # where topk's, hyperbolic's and vanilla blockwise's time goes, by op: s9's profiles named no
  # op (its kernels ran inside CUDA graphs, XLA's command buffers, whose kernels the trace does
  # not annotate: the guess this part tests by turning them off for the profiled rows)
  ROWS=60 row P10 . --types vanilla,topk,hyperbolic --fused blockwise --profile /tmp/prof10 \
    --xla_flags=--xla_gpu_enable_command_buffer= ;;
r2048)  # every variant at 2048 tokens, batch 32 (the tokens of a step held at 128 x 512)
  ROWS=9 row C_2048a . --types vanilla,neg_l2,dense,hyperbolic,topk,orthogonal,random --fused cudnn --inputs_length 2048 --batch_size 32
  ROWS=9 row C_2048b . --types linear,fixed_random,factorized_random,factorized_dense,frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 2048 --batch_size 32 ;;
s11)  # every variant at 2048 (batch 32: the tokens of a step held at 128 x 512) with four workers
  # (at 2048 no train state is large: the random synthesizers' maps are 2.4 GB), then at 8192 the
  # two rows no call has reached on the present code: factorized_dense, and topk by chunks.
  # Ran 2026-12-07 as BUDGET=380: five rows in 381 s, one about every 85 s, where s10's two
  # workers finished one every 52-57 s (at 8192): four workers set up at once (init and compile,
  # 74-110 s a row here) contend for the host's CPUs. Two it is; s12a/s12b have the rest
  JOBS=4; F=${F/--jobs 2/--jobs 4}
  ROWS=16 row C11_2048 . --types vanilla,neg_l2,dense,hyperbolic,topk,orthogonal,random,linear,fixed_random,factorized_random,factorized_dense,frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 2048 --batch_size 32
  F=${F/--jobs 4/--jobs 1}
  ROWS=4 row B11_8192 . --types factorized_dense,topk --fused cudnn --inputs_length 8192 --batch_size 8 ;;
s12a)  # the 2048 rows s11 did not reach, two workers
  ROWS=7 row C12_2048a . --types orthogonal,random,linear,factorized_dense,factorized_random --fused cudnn --inputs_length 2048 --batch_size 32 ;;
s12b)  # the rest of 2048, then the three 8192 rows no call has reached on the present code
  ROWS=6 row C12_2048b . --types fixed_random,frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 2048 --batch_size 32
  F=${F/--jobs 2/--jobs 1}
  ROWS=5 row B12_8192 . --types factorized_dense,topk,hyperbolic --fused cudnn --inputs_length 8192 --batch_size 8 ;;
s13a)  # twelfth session: the three 8192 rows no call has reached on the present code, two workers
  # (none has a quadratic parameter: s10's six fitted two at a time), vanilla as the baseline
  ROWS=6 row B13_8192 . --types vanilla,factorized_dense,topk,hyperbolic --fused cudnn --inputs_length 8192 --batch_size 8 ;;
s13b)  # the nine 2048 rows s11 did not reach, two workers, vanilla again as this machine's baseline
  ROWS=12 row C13_2048 . --types vanilla,orthogonal,random,linear,factorized_dense,factorized_random,fixed_random,frozen_gaussian,cosine,rotary --fused cudnn --inputs_length 2048 --batch_size 32 ;;
esac
