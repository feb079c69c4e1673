#!/usr/bin/env bash
# Installs what building and testing Switchyard needs on a fresh Debian machine:
# cmake (Pingora's zlib-ng), a C compiler and perl/make (vendored OpenSSL), and a Python
# venv with the official SDKs for the end-to-end tests; Debian's chromium (the dashboard's
# browser test, driven by Playwright), psql (the PostgreSQL tests make their databases) and
# redis-server with redis-cli (fleet governance; one test runs a private Redis and stops it).
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in cmake cc make perl chromium psql redis-server redis-cli; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  pkgs=(cmake build-essential perl chromium postgresql-client redis-server)
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
