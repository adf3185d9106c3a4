# Sourced by the device scripts (run.sh, settle.sh): the budget clock, where results go, the Python path
# to the checkout and the packages pack.py carried, and what the machine is (env.txt in $OUT).
START=$(date +%s)
BUDGET=${BUDGET:-480}
OUT=${OUT:-/tmp/devout}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.devrun/site:$PWD:$PWD/bench PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
DEV=cuda; RUNS=/tmp/devruns
[ -n "$SMOKE" ] && DEV=cpu
{ date; nvidia-smi -L 2>&1 | head -2; nproc
  python3 -c "import torch,timm,numpy,skimage;print(torch.__version__,timm.__version__,numpy.__version__,skimage.__version__,torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
