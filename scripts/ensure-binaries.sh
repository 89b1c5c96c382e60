#!/usr/bin/env bash
# The binaries the dev stack and the tests run, from Debian when missing (as root):
# redis-server (unless STREAMREC_REDIS_URL names a Redis) and prometheus/promtool
# (the observability tests check the alert rules and scrape a live worker), the
# Pushgateway and redis_exporter (the deployments' retrain counters and Redis memory
# go through them), and
# chromium with its driver (the console test drives a real headless browser).
set -euo pipefail
missing=()
if [[ -z "${STREAMREC_REDIS_URL:-}" ]] && ! command -v redis-server >/dev/null; then
  missing+=(redis-server)
fi
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  missing+=(prometheus)
fi
for exporter in prometheus-pushgateway prometheus-redis-exporter; do
  if ! command -v "$exporter" >/dev/null; then
    missing+=("$exporter")
  fi
done
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  missing+=(chromium chromium-driver)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "missing: ${missing[*]}; run 'sudo apt-get install ${missing[*]}'" \
       "(or set STREAMREC_REDIS_URL for Redis)" >&2
  [[ " ${missing[*]} " == *" redis-server "* ]] && exit 1
  exit 0  # without prometheus, the Pushgateway or chromium only the tests that need them skip
fi
echo "installing Debian's ${missing[*]}..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# We run our own instances on free ports; the packaged services may stay as they are.
