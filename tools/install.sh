#!/usr/bin/env bash
# Usage: bash tools/install.sh
# Installs faeval (editable, with test tools and submitit for Slurm sweeps, at the tested
# versions pinned in constraints.txt) and the offline Fashion-MNIST files from Debian's package
# dataset-fashion-mnist. Needs root for apt-get (or the files already there). The Slurm
# cluster the sweep tests use: bash tools/slurm_cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
# The tested set (constraints.txt) within the ranges setup.cfg declares.
python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,slurm]'
