#!/usr/bin/env bash
# The LTH paper's Fashion-MNIST protocol with ltc (see README.md). Needs the Debian package
# dataset-fashion-mnist (apt-get install dataset-fashion-mnist). Resumable: re-run to continue.
set -euo pipefail
cd "$(dirname "$0")"
LTC=${LTC:-../../.venv/bin/ltc}
OUT=${OUT:-runs}

# LeNet-300-100: Adam 1.2e-3, batch 60, up to 50k iterations with early stopping (patience 10 evals
# of 500 iterations after the minimum validation loss), fc 20% / output 10% per round, 12 rounds,
# 3 trials, winning ticket vs random re-initialisation.
$LTC ticket --model lenet300 --dataset fashion-mnist --optimizer adam --lr 0.0012 --batch-size 60 \
    --iterations 50000 --eval-every 500 --patience 10 --rounds 12 --rate-fc 0.2 --rate-output 0.1 \
    --controls reinit --trials 3 --out "$OUT" --no-progress

# Conv-2, small: Adam 2e-4, batch 60, 600 iterations per training (the paper trains 20k: about
# 1 h per training on this 2-core CPU), 2 rounds at conv 30% / fc 50% / output 20%, 1 trial.
$LTC ticket --model conv2 --dataset fashion-mnist --optimizer adam --lr 0.0002 --batch-size 60 \
    --iterations 600 --eval-every 200 --rounds 2 --rate-conv 0.3 --rate-fc 0.5 --rate-output 0.2 \
    --controls reinit --trials 1 --out "$OUT" --no-progress
