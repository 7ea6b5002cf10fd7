#!/usr/bin/env bash
# Install everything ume needs on a fresh Debian machine (run as root, or with sudo available):
# Debian packages (TTS engines and voices, the fortune and documentation texts the corpora are made
# from, libsndfile), a virtualenv in .venv and the Python packages (torch pinned to the CPU build
# 2.13.0). Idempotent: re-running is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
# TTS engines and voices; text sources of the corpora (fortunes for tiny..large; Debian's
# documentation in English and Simplified Chinese for the xl text pool, see ume/data/text_pool.py)
APT_PKGS="espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
  fortunes fortunes-zh manpages manpages-dev manpages-zh debian-handbook debian-edu-doc-en
  debian-edu-doc-zh-cn gimp-help-en gimp-help-zh-cn kicad-doc-en kicad-doc-zh
  python3.11-doc postgresql-doc-15 git-doc debian-reference-en debian-reference-zh-cn lynx libsndfile1 make"
missing=""
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # --no-install-recommends: the manuals recommend their viewers (GIMP, KiCad), not needed here;
  # lynx first: it is the small www-browser the GIMP manuals depend on (else apt picks GIMP's)
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends lynx \
    >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $missing >/dev/null
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! $PY -m venv .venv 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -qq python3-venv >/dev/null
    $PY -m venv .venv
  fi
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned, so nothing pulls a multi-GB CUDA build
.venv/bin/pip install -q torch==2.13.0
# hf: transformers, so the tests of ume.upcycle on Whisper/Wav2Vec2/HuBERT models run too
.venv/bin/pip install -q -e ".[dev,hf]"
