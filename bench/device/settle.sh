#!/bin/bash
# LIME settle studies on a lent GPU, from the checkout's root, after bench/device/pack.py:
#   run(command="BUDGET=480 OUT=$OUT ARCHS='cs_convnext dpn_se da_covidnet' bash bench/device/settle.sh",
#       carry=[".devrun"], timeout_s=540)
# The networks of ARCHS side by side on the one GPU, each with a share of the cores: each is trained
# briefly on the quarter of the Kermany films, then `bench_explain --settle-study` runs on the ten bench
# films with 5000-sample golds and --cache, so that stopping rules can be scored afterwards on a CPU from
# the cached network outputs (`bench_explain --replay DIR`), without the network. Per network $OUT gets one
# log and one tarball of its cache, refreshed as films finish; whatever a cut leaves is usable. A second
# call on the still-warm machine resumes: the trained run is kept (the trainer refuses to overwrite it)
# and the study reads the films it has from its cache. SMOKE=1: the plumbing on a CPU with tiny settings.
source "$(dirname "$0")/env.sh"
ARCHS=${ARCHS:-"cs_convnext dpn_se da_covidnet"}
EPOCHS=${EPOCHS:-6}
CACHES=/tmp/devcache
n=$(echo $ARCHS | wc -w); workers=$(( $(nproc) / (n > 0 ? n : 1) ))
export OMP_NUM_THREADS=$workers  # three processes on 16 cores: not each with 16 threads
left() { echo $(( BUDGET - 15 - ($(date +%s) - START) )); }  # 15 s kept for the last tarballs
pack() { tar -czf "$OUT/cache_$1.tgz" -C $CACHES $1 $RUNS/$1/report.md 2>/dev/null; }  # one network's cache

one() {  # one network: train, then study, then pack its cache; all within what is left
  local arch=$1 log="$OUT/$1.txt" recipe
  recipe=$(python3 -c "from cxrviewer.models import model_info; from trainer.recipes import RECIPES
p = model_info('$arch').paper  # the recipe of the paper that defines the network
print(next((n for n, r in RECIPES.items() if p and r.paper == p), 'seed000'))")
  if [ -n "$SMOKE" ]; then TR="--recipe smoke --epochs 1"; EX="--films 1 --gold 300 --samples 200"; else
    TR="--recipe $recipe --epochs $EPOCHS --lr 3e-4 --batch-size 32 --no-deterministic --workers $workers"
    EX="--films 10 --gold 5000 --samples 480"; fi
  timeout $(( $(left) * 2 / 5 )) python3 -m trainer fit .devrun/kermany/quarter.csv --arch $arch $TR \
    --pretrained none --device $DEV --out $RUNS/$arch --name $arch-q > "$log" 2>&1; echo "train rc=$?" >> "$log"
  [ -f $RUNS/$arch/best.safetensors ] || return
  ( while sleep 20; do pack $arch; done ) &
  local packer=$!
  timeout $(left) python3 bench/bench_explain.py --device $DEV --film-list .devrun/films/list.txt \
    --checkpoints $RUNS/$arch/best.safetensors --settle-study $EX --settle-seeds 3 --samplings orthogonal \
    --with-reference --cache $CACHES/$arch --rules 96:48,144:48,192:48,96:96 >> "$log" 2>&1
  echo "study rc=$?" >> "$log"
  kill $packer 2>/dev/null
  pack $arch
}

for arch in $ARCHS; do one $arch & done
wait
echo "total $(( $(date +%s) - START )) s" >> "$OUT/env.txt"
