#!/usr/bin/env bash
# Fresh clone -> `make install`, and fresh clone -> served `make demo` (HTTP 200 on /run/demo), each with an
# empty uv cache; prints the wall time of each (docs/benchmarks.md). Usage: tests/bench_setup.sh [REPO]
set -u
src=$(cd "${1:-.}" && pwd)
for what in install demo; do
  dir=$(mktemp -d /tmp/fresh-XXXX); cache=$(mktemp -d /tmp/uvcache-XXXX)
  git clone -q "$src" "$dir/advbias"
  cd "$dir/advbias"
  start=$(date +%s.%N)
  if [ $what = install ]; then
    UV_CACHE_DIR=$cache make install >"$dir/$what.log" 2>&1
    end=$(date +%s.%N)
  else
    (UV_CACHE_DIR=$cache make demo DEMO_PORT=5077 >"$dir/$what.log" 2>&1 &)
    until curl -sf -o /dev/null http://127.0.0.1:5077/run/demo; do sleep 0.5; done
    end=$(date +%s.%N)
    pkill -f "serve --host 127.0.0.1 --port 5077" || true
  fi
  echo "$what: $(echo "$end - $start" | bc) s (load $(cut -d' ' -f1-3 /proc/loadavg))"
  cd /; rm -rf "$dir" "$cache"
done
