#!/usr/bin/env bash
# The GPU checks of issue 9 in one run (about 6 minutes on one H200):
#   1. tests/test_cuda.py: every modality on CUDA equals the CPU run; --device on the CLI;
#      lazy batches through pinned memory; network training in fp32, bf16 and fp16;
#   2. the benchmark harness with --device cuda at the DESIGN sizes (ptycho 420 x 128^2,
#      CDI 256^2, multislice MoS2), each against the FFT floor measured on the same GPU;
#   3. a 2000 x 256^2 scene (500 MiB of patterns), in memory and lazily read;
#   4. the DESIGN ptycho case with batches of 105 and 420 patterns.
# Usage: bash experiments/gpu/checks.sh OUT_DIR   (run from the repository root)
set -uo pipefail
out=${1:?usage: checks.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$out/gpu.txt"
python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider --tb=short 2>&1 | tail -80 | tee "$out/tests.txt"
python3 experiments/bench/run.py --device cuda --threads 8 --peers --epochs 60 \
    --out /tmp/bench_design 2>&1 | tee "$out/design.txt" | tail -20
cp /tmp/bench_design/bench.json "$out/design.json"
timeout 300 python3 experiments/gpu/large.py --epochs 5 2>&1 | tee "$out/large.txt"
for batch in 105 420; do  # larger batches: fewer kernel launches per epoch on a GPU
    python3 experiments/bench/run.py --device cuda --threads 8 --peers --cases ptycho \
        --epochs 60 --set recon.batch_size=$batch --out /tmp/bench_b$batch 2>&1 | tail -4
    cp /tmp/bench_b$batch/bench.json "$out/design_batch$batch.json"
done
