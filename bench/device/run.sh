#!/bin/bash
# The GPU checks of issues 3 and 4 in one device call, from the checkout's root, after bench/device/pack.py:
#   run(command="BUDGET=480 OUT=$OUT ARCHS='da_covidnet dpn_se' bash bench/device/run.sh", carry=[".devrun"],
#       timeout_s=540)
# 1. the CUDA tests; 2. inference paths of the five networks on the GPU; 3. for each of ARCHS: train it on
# the quarter of the Kermany films, then its LIME faithfulness against 5000-sample golds on the ten bench
# films. Each step gets a share of what is left of BUDGET seconds; every log lands in $OUT as it is written.
# SMOKE=1: the plumbing on a CPU with tiny settings.
source "$(dirname "$0")/env.sh"
ARCHS=${ARCHS:-"fusion_tl"}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
cap() { local l; l=$(( $(left) - $2 )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo $l; }
n=$(echo $ARCHS | wc -w)
per=$(( (BUDGET - 200) / (n > 0 ? n : 1) ))  # what each network's training and explanation share

if [ -z "$SMOKE" ]; then
  timeout $(cap 90 $(( BUDGET - 90 ))) python3 -m pytest -q -s -p no:cacheprovider tests/test_inference.py \
    tests/test_checkpoint.py > "$OUT/tests.txt" 2>&1; echo "rc=$?" >> "$OUT/tests.txt"
  INF="--batch 32 --repeats 3 --models mobilenet_lung,cs_convnext,da_covidnet,dpn_se,fusion_tl"
else INF="--quick"; fi
timeout $(cap 100 $(( BUDGET - 200 ))) python3 bench/bench_inference.py --device $DEV $INF \
  > "$OUT/bench_inference.txt" 2>&1; echo "rc=$?" >> "$OUT/bench_inference.txt"

i=0
for arch in $ARCHS; do
  i=$((i + 1)); end=$(( 200 + per * i ))  # this network's share ends here (seconds from START)
  if [ -n "$SMOKE" ]; then TR="--recipe smoke --epochs 1"; EX="--films 1 --gold 300 --ref-films 1"; else
    TR="--recipe seed000 --epochs 10 --lr 3e-4 --batch-size 32 --no-deterministic --workers 12"
    EX="--films 10 --gold 5000 --ref-films 2"; fi
  [ "$arch" = fusion_tl ] && [ -z "$SMOKE" ] && TR="${TR/seed000/seed004}"
  timeout $(cap $(( per * 2 / 5 )) $(( BUDGET - end + per * 3 / 5 ))) python3 -m trainer fit \
    .devrun/kermany/quarter.csv --arch $arch $TR --pretrained none --device $DEV --out $RUNS/$arch \
    --name $arch-q > "$OUT/train_$arch.txt" 2>&1; echo "rc=$?" >> "$OUT/train_$arch.txt"
  [ -f $RUNS/$arch/best.safetensors ] && timeout $(cap 600 $(( BUDGET - end ))) python3 bench/bench_explain.py \
    --device $DEV --film-list .devrun/films/list.txt --checkpoints $RUNS/$arch/best.safetensors $EX \
    > "$OUT/explain_$arch.txt" 2>&1; echo "rc=$?" >> "$OUT/explain_$arch.txt"
done
echo "total $(( $(date +%s) - START )) s" >> "$OUT/env.txt"
