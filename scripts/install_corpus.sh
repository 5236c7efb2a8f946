#!/usr/bin/env bash
# Install the Debian packages behind saekit's embedded default corpus (see saekit/data/debian.py):
#   bible-kjv + bible-kjv-text  -> the `bible` command and the King James Bible text
#   python3-doc                 -> /usr/share/doc/python3.X/html/_sources/**/*.rst.txt
#   fortunes                    -> /usr/share/games/fortunes/*
#   fortunes-de/-es/-it/-ru     -> /usr/share/games/fortunes/{de,es,it,ru}: the `language` probing task
#                                  (saekit/data/labelled.py)
# Idempotent: does nothing when everything is already present. Uses sudo only when not root.
set -euo pipefail

have_python_docs() {
    compgen -G "/usr/share/doc/python3.*/html/_sources/*.rst.txt" > /dev/null
}

have_fortune_languages() {
    for lang in de es it ru; do [ -d "/usr/share/games/fortunes/$lang" ] || return 1; done
}

if command -v bible > /dev/null && have_python_docs && [ -f /usr/share/games/fortunes/fortunes ] && have_fortune_languages; then
    exit 0
fi

if ! command -v apt-get > /dev/null; then
    echo "install_corpus.sh: apt-get not found; install python3-doc, bible-kjv, fortunes and fortunes-de/-es/-it/-ru with your package manager" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq > /dev/null
$SUDO apt-get install -y -qq python3-doc bible-kjv-text bible-kjv fortunes \
    fortunes-de fortunes-es fortunes-it fortunes-ru > /dev/null
