#!/usr/bin/env bash
# Browser tests drive Debian's chromium through playwright-core: `npx playwright install`
# cannot download browsers on a closed network, the distribution package can be installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
echo "installing chromium (apt) for the tracker browser tests"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
command -v chromium
