#!/usr/bin/env bash
# streamrec starts its own redis-server for the dev stack and the tests unless
# STREAMREC_REDIS_URL names one; this makes sure the binary is there.
set -euo pipefail
if [[ -n "${STREAMREC_REDIS_URL:-}" ]] || command -v redis-server >/dev/null; then
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "redis-server is missing: run 'sudo apt-get install redis-server' or set STREAMREC_REDIS_URL" >&2
  exit 1
fi
echo "installing Debian's redis-server..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# We run our own instances on free ports; the packaged service may stay as it is.
command -v redis-server >/dev/null
