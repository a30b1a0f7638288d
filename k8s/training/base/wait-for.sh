#!/bin/sh
# Init step of the training pods: block until every input exists, so the whole stack can be
# applied at once and each stage starts when what it reads is there.
#   wait-for.sh PATH_OR_URL...
# A path waits until it exists (the model's .complete marker, an SFT adapter, a dataset).
# An http(s) URL waits until it answers 2xx (the ToolActor's /ready, a vLLM server's /health).
# It says what it waits for every time it checks, so `kubectl logs -c wait-for-inputs` tells.
set -u
interval="${WAIT_INTERVAL_S:-10}"
for target in "$@"; do
  case "$target" in
    http://* | https://*)
      until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
        "$target" 2>/dev/null; do
        echo "waiting for $target to answer"
        sleep "$interval"
      done ;;
    *)
      until [ -e "$target" ]; do
        echo "waiting for $target to exist"
        sleep "$interval"
      done ;;
  esac
  echo "ready: $target"
done
