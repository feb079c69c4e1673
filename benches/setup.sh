#!/usr/bin/env bash
# Installs what the load benchmark compares against: nginx as a plain proxy_pass hop.
# (perf, for profiles, is optional: apt-get install linux-perf.)
set -euo pipefail
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nginx-light >/dev/null 2>&1 \
    || DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nginx >/dev/null
fi
echo "nginx: $(command -v nginx || echo /usr/sbin/nginx)"
