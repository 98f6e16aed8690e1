#!/usr/bin/env bash
# Set up a fresh machine: the real Fashion-MNIST (Debian's package) and this project with its all (both frameworks),
# test and tensorboard extras (the last so the suite's train --tensorboard tests run rather than skip).
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: dataset-fashion-mnist not installed (needs apt-get as root); scripts will fall back to --data-dir or --download" >&2
  fi
fi
python3 -m pip install -q --disable-pip-version-check -e '.[all,test,tensorboard]'
