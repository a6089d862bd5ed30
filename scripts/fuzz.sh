#!/usr/bin/env bash
# Fuzzes every parser that takes outside bytes (issue 13; Fuzz/README.md) with libFuzzer
# for a bounded time each, starting from the corpus checked in under Fuzz/corpus:
#   topology       the topology compiler (Swift)
#   agent-request  the agent's request decoder (Swift)
#   remote-reply   the remote executor client's reply decoder (Swift)
#   remote-frame   vsmmu-remote's frame parser and handlers (C, ASan + UBSan + LeakSanitizer)
# usage: scripts/fuzz.sh [SECONDS-PER-TARGET (default 20)] [TARGET...]
# Prints one line per target: "fuzz: TARGET: N inputs in S s, clean" or the finding (the
# crashing input is kept under .build-fuzz/findings/). Exit 1 on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(topology agent-request remote-reply remote-frame)
out=.build-fuzz
mkdir -p "$out/findings"

need_swift=0
for t in "${targets[@]}"; do [ "$t" != remote-frame ] && need_swift=1; done
if [ "$need_swift" = 1 ]; then
  # Its own scratch directory: every module built with libFuzzer's coverage hooks, without
  # touching the ordinary build. VSMMU_FUZZ=1 puts the vsmmu-fuzz target in the package.
  VSMMU_FUZZ=1 swift build --scratch-path "$out/swift" --product vsmmu-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library 2>&1 | grep -E "error|warning: unre|Compiling vsmmu_fuzz|Build complete" || true
  swift_bin="$(VSMMU_FUZZ=1 swift build --scratch-path "$out/swift" --show-bin-path)/vsmmu-fuzz"
  [ -x "$swift_bin" ] || { echo "fuzz: the Swift fuzz target did not build"; exit 1; }
fi
CC=$(command -v clang || echo /opt/swift/usr/bin/clang)
"$CC" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I Sources/CVsmmuUAPI/include -o "$out/remote-frame" Fuzz/remote-frame.c Sources/CVsmmuUAPI/process.c

rc=0
for t in "${targets[@]}"; do
  work=$(mktemp -d)   # new inputs go here; the checked-in corpus is only read
  # Swift keeps its global constants (the schema tables) where LeakSanitizer cannot see
  # them: leak detection stays on for the C target only.
  if [ "$t" = remote-frame ]; then bin="$out/remote-frame" leaks=1; else bin="$swift_bin" leaks=0; fi
  set +e
  ASAN_OPTIONS="detect_leaks=$leaks:${ASAN_OPTIONS:-}" VSMMU_FUZZ_TARGET=$t "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$out/findings/$t-" "$work" "Fuzz/corpus/$t" >"$out/$t.log" 2>&1
  status=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -1)
  if [ "$status" = 0 ]; then
    echo "fuzz: $t: ${runs:-?} inputs in ${seconds} s, clean ($(ls "$work" | wc -l) new corpus entries)"
  else
    rc=1
    echo "fuzz: $t: FINDING after ${runs:-?} inputs (exit $status); input kept in $out/findings/, log in $out/$t.log:"
    grep -E "ERROR|SUMMARY|Fatal error|fuzz finding|artifact" "$out/$t.log" | head -8 | sed 's/^/  /'
  fi
  rm -rf "$work"
done
exit "$rc"
