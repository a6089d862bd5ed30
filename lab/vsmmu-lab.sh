#!/usr/bin/env bash
# The project's live-kernel lab: a real Linux 7.2 (iommufd, VFIO cdev, the iommufd
# selftest mock) under QEMU/TCG with an emulated VT-d and an `edu` device, built by
# lab.sh (the recipe of ../shared/lab, copied here so the project owns it), with a static
# vsmmu and the scenarios in scenarios/ run inside the guest as extra checks.
#
#   bash lab/vsmmu-lab.sh            # as root; cold ~10 min (kernel build), warm ~1 min
#
# Scenarios (each a guest check, run in both VT-d modes, legacy and scalable):
#   vsmmu-edu   `vsmmu host` describes the guest; an in-guest `vsmmu agent` applies a topology
#               with the edu device under `devices:` (cdev bind, IOAS, paging HWPT, attach,
#               memfd RAM by IOMMU_IOAS_MAP_FILE), re-plans to `No changes.`, destroys
#   vsmmu-mock  the whole nested graph on the selftest mock (nest parent, vIOMMU, vDevices,
#               abort/bypass nested HWPTs, vEVENTQ, memory), re-plan `No changes.`, destroy
# Last line: `lab: N passed, M failed` (every LAB-CHECK of every boot).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD=${VSMMU_LAB_BUILD:-$REPO/.build-lab}

echo "vsmmu-lab: building a static vsmmu (swift build -c release --static-swift-stdlib)"
t=$(date +%s)
mkdir -p "$BUILD"
if ! (cd "$REPO" && swift build -c release --static-swift-stdlib --product vsmmu --scratch-path "$BUILD" > "$BUILD/static-build.log" 2>&1); then
	tail -20 "$BUILD/static-build.log"
	echo "lab: 0 passed, 1 failed"
	exit 1
fi
echo "vsmmu-lab: static vsmmu built in $(($(date +%s) - t)) s"

overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
mkdir -p "$overlay/bin" "$overlay/lab/run.d"
cp "$BUILD/release/vsmmu" "$overlay/bin/vsmmu"
strip "$overlay/bin/vsmmu" 2>/dev/null || true
cp "$HERE"/scenarios/* "$overlay/lab/run.d/"
chmod +x "$overlay"/lab/run.d/*

log=${TMPDIR:-/tmp}/vsmmu-lab.log
LAB_OVERLAY=$overlay LAB_SWIFT=0 bash "$HERE/lab.sh" > "$log" 2>&1
rc=$?
grep -E 'LAB-CHECK|^boot|LAB OK|LAB FAIL|took|total' "$log" | sed 's/^ *//'
work=${LAB_WORK:-${TMPDIR:-/tmp}/vsmmu-lab}
for b in "$work"/boot-*.log; do
	[ -f "$b" ] && grep -E 'VSMMU (mock )?(host rc|apply rc|replan rc|destroy rc)' "$b" | sed "s|^|$(basename "$b" .log): |"
done
pass=$(grep -c 'LAB-CHECK PASS' "$log")
fail=$(grep -c 'LAB-CHECK FAIL' "$log")
if [ "$rc" != 0 ] && [ "$fail" = 0 ]; then
	tail -20 "$log"
	fail=1
fi
echo "lab: $pass passed, $fail failed"
[ "$fail" = 0 ]
