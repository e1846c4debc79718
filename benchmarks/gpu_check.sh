#!/usr/bin/env bash
# One-command GPU check: the CUDA tests, bench.py on CUDA (ours vs transformers' OpenAIGPTDoubleHeadsModel),
# bench_e2e.py's 3-epoch ROCStories job in bf16 and fp32, and bench_gpt2.py (GPT-2 124M pre-training at n_ctx 1024 in
# bf16 against transformers and, where $NANOGPT names nanoGPT's folder, nanoGPT; llm.c's figure is ~468K tok/s per
# H100) and, on a machine with 2 or more GPUs, GPT-2 124M pre-training under torchrun with DDP and with --shard
# (FSDP2), each run's tokens/s and peak memory in its output; everything is printed and saved under a results folder.
#   bash benchmarks/gpu_check.sh [--results DIR]             on a machine with an NVIDIA GPU (default DIR bench_results/gpu_check_<UTC time>)
#   bash benchmarks/gpu_check.sh --dry-run [--results DIR]   the same steps, tiny, on the CPU: CI checks that the script does not rot
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the repository root: pytest and the relative paths below
PYTHON=${PYTHON:-$(command -v python || command -v python3)}  # tests pass the interpreter that runs them
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
NANOGPT=${NANOGPT:-../shared/reference/nanogpt}  # nanoGPT's train.py, model.py, configurator.py (skipped if absent)
ORIGINAL_ENCODER=${ORIGINAL_ENCODER:-../shared/reference/original-gpt2/encoder.py}

dry_run=0
results=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --results) [ $# -ge 2 ] || { echo "gpu_check.sh: --results needs a folder" >&2; exit 2; }; results=$2; shift ;;
    --results=*) results=${1#*=} ;;
    -h|--help) sed -n '2,5p' "$0" | cut -c3-; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --dry-run and --results DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$results" ]; then
  results=bench_results/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)
  [ "$dry_run" = 1 ] && results=${results}_dry_run
fi

if [ "$dry_run" = 0 ] && ! command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
  echo "gpu_check.sh: $NVIDIA_SMI not found: this check needs a machine with an NVIDIA GPU and its driver (--dry-run runs the steps tiny on the CPU)" >&2
  exit 1
fi
mkdir -p "$results"

# step NAME COMMAND...: print a header, run the command, its output printed and saved to $results/NAME.txt
step() {
  local name=$1
  shift
  echo
  echo "=== gpu_check.sh: $* ==="
  local start=$SECONDS
  "$@" 2>&1 | tee "$results/$name.txt"
  echo "=== gpu_check.sh: $name took $((SECONDS - start)) s ==="
}

# shard_runs NPROC PRETRAIN_FLAGS...: pre-train on tiny Shakespeare (GPT-2 tokens) under torchrun in NPROC processes,
# with DDP and then with --shard; the phases line gives each run's peak memory (rank 0), its log the tokens/s
shard_runs() {
  local nproc=$1
  shift
  [ -f "$results/shakespeare_gpt2/meta.json" ] || step shard_corpus "$PYTHON" prepare_corpus.py \
    --input data/tinyshakespeare/ --out "$results/shakespeare_gpt2" --arch gpt2
  for mode in ddp shard; do
    local flags=()
    [ "$mode" = shard ] && flags=(--shard)
    step "pretrain_$mode" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$nproc" pretrain.py \
      --corpus "$results/shakespeare_gpt2" --out "$results/pretrain_$mode" --quiet "$@" "${flags[@]}"
    "$PYTHON" -c "import json, sys; r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f'gpu_check.sh: pretrain_$mode: {r[\"tokens_per_s\"]:.0f} tokens/s over the last records\' updates')" \
      "$results/pretrain_$mode/log.jsonl" | tee -a "$results/pretrain_$mode.txt"
  done
}

if [ "$dry_run" = 1 ]; then
  # no GPU here: pytest -m cuda only collects the CUDA tests and skips them; bench.py and bench_e2e.py run tiny
  # (bench.py on our config only: importing transformers alone takes ~10 s, and tests/test_bench.py runs the peer)
  step pytest_cuda "$PYTHON" -m pytest -m cuda -q
  step bench "$PYTHON" benchmarks/bench.py --quick --in-process --configs ours-fp32 --warmup-steps 0 \
    --json "$results/bench_quick.json"
  step e2e_tiny "$PYTHON" benchmarks/bench_e2e.py --job tiny --workdir "$results/e2e_work" --json "$results/e2e_tiny.json"
  step gpt2_quick "$PYTHON" benchmarks/bench_gpt2.py --quick --precisions fp32 --json "$results/gpt2_quick.json"
  OMP_NUM_THREADS=1 shard_runs 2 --device cpu --n_embd 32 --n_head 4 --n_layer 2 --n_ctx 64 --n_batch 4 \
    --n_updates 4 --eval_windows 2 --sample_every 0
else
  step nvidia_smi "$NVIDIA_SMI"
  step torch_cuda "$PYTHON" -c "import sys, torch
if not torch.cuda.is_available():
    sys.exit(f'gpu_check.sh: torch {torch.__version__} sees no CUDA device (a CPU-only build of torch?)')
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'device', torch.cuda.get_device_name(0))"
  step pytest_cuda "$PYTHON" -m pytest -m cuda -q
  step bench "$PYTHON" benchmarks/bench.py --device cuda --steps 10 --json "$results/bench_cuda.json"
  for precision in bf16 fp32; do
    step "e2e_rocstories_$precision" "$PYTHON" benchmarks/bench_e2e.py --job rocstories --device cuda --precision "$precision" \
      --workdir "$results/e2e_work" --json "$results/e2e_rocstories_$precision.json"
  done
  rm -rf "$results/e2e_work/model_full"  # 465 MB of random weights; the run logs stay
  peers=()
  [ -f "$NANOGPT/train.py" ] && peers+=(--nanogpt "$NANOGPT")
  [ -f "$ORIGINAL_ENCODER" ] && peers+=(--original_encoder "$ORIGINAL_ENCODER")
  # the steady-state protocol of the CPU tables (BENCHMARKS.md, Issue 31): each round of each peer in a process of
  # its own, at least 3 updates discarded and until two in a row settle, 10 timed, 3 rounds; every model compiled as
  # its users compile it on a GPU (nanoGPT: its default --compile and fused AdamW); MFU against the GPU's bf16 peak
  step gpt2_cuda "$PYTHON" benchmarks/bench_gpt2.py --device cuda --precisions bf16 --n_ctx 1024 --n_batch 16 \
    --steps 10 --warmup_steps 3 --rounds 3 --compile "${peers[@]}" --json "$results/gpt2_cuda.json"
  n_gpus=$("$NVIDIA_SMI" -L | grep -c '^GPU' || true)
  if [ "$n_gpus" -ge 2 ]; then
    shard_runs "$n_gpus" --preset 124M --n_ctx 1024 --n_batch $((8 * n_gpus)) --micro_batch 8 --precision bf16 \
      --n_updates 30 --eval_windows 8 --sample_every 0
  else
    echo "gpu_check.sh: one GPU: the DDP and --shard pre-training runs need 2 or more"
  fi
fi

echo
echo "gpu_check.sh: every step passed$([ "$dry_run" = 1 ] && echo ' (dry run, CPU)'); output and JSON in $results/"
