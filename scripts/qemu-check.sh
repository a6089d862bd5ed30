#!/usr/bin/env bash
# qemu-check: what vsmmu emits for QEMU and libvirt, checked against a real QEMU >= 11
# (qemu-system-aarch64 and qemu-system-x86_64) and libvirt's domain schema.
#
#   bash scripts/qemu-check.sh          # as root; Debian 12 x86_64; reaches the Debian archive of
#                                       # this machine's apt sources (scripts/debian-mirror.sh)
#
# Timing (2-core Debian 12 x86_64, no KVM, TCG):
#   measured 2026-11-25 with `time bash scripts/qemu-check.sh` (3 guests, 94 checks):
#   cold 48-63 s wall, warm 19-28 s; each TCG UEFI boot reaches BDS in about 6 s.
#   measured 2026-12-03, with qemu-system-x86, libvirt-common and libxml2-utils added and
#   the hand-over checks (c), on the shared machine under load:
#   cold 210 s (root setup 182 s, 692 MB), warm 28-36 s (125 checks with 6 guests).
#   measured 2026-12-03 at load average 17-21 on the shared 2 cores, with the GB200-like
#   guest (SRAT, PCI hole, 8 devices, 34 NUMA nodes) and the nvidia dialect added, and one
#   verbatim start per option shape: warm 53 s wall, 9.2 s user (224 checks); the same
#   run without the new guest 37-40 s wall, 6.7 s user. The GB200 guest reaches BDS after
#   8-10 s of TCG at that load.
#
# QEMU comes from Debian: a minimal trixie root (debootstrap, minbase) with
# qemu-system-arm and qemu-system-x86 from trixie-backports (11.1.x; bookworm-backports
# only has 10.0, which predates accel=on), qemu-efi-aarch64 (the UEFI firmware), python3,
# libvirt-common (12.9 from trixie-backports: /usr/share/libvirt/schemas; bookworm's 9.0
# has no <iommufd> element) and libxml2-utils (xmllint), kept under $VSMMU_QEMU_CACHE
# (default ~/.cache/vsmmu-qemu; the package list is part of the cache key) and run with
# chroot inside a private mount namespace (unshare -m), so no mount outlives a run. The
# host's glibc (2.36) is too old for that QEMU, hence the root.
#
# For each guest (examples/<file>.yaml guest, host examples/hosts/grace-2smmu-cmdqv.yaml,
# a fresh --state-dir for every vsmmu call) scripts/qemu-check/check.py runs:
#   (a) every -object/-device/-machine property emitted by `vsmmu qemu-args` is listed
#       by the binary's `TYPE,help`, and its value fits the listed type; each option that
#       the TCG boot has to change is also started verbatim once (-S): QEMU must parse
#       it and stop only at the environment gate (KVM for accel=on, no host device
#       for vfio-pci, no hugepages for the memory backend); options that differ only in
#       where they sit (id, bus, host address) share one start;
#   (b) the same topology under TCG with vfio-pci replaced by an emulated PCIe endpoint
#       ($VSMMU_QEMU_PLACEHOLDER) in the same root ports, accel=off and the features
#       accel=off refuses set to what it accepts (ats=off ril=on oas=44 ssidsize=0
#       cmdqv=off), booted with the UEFI firmware until it reaches BDS; QMP query-pci
#       must show each pxb-pcie as root bus bus_nr and each placeholder at the address
#       predicted from the args (bus_nr + 1 + rank of its root port's slot), equal to
#       `vsmmu plan --format json` layout guestAddress and vsid (bus << 8 | devfn);
#       the ACPI IORT QEMU generated (read from guest RAM with QMP pmemsave) must map
#       each device's RID 1:1 to that StreamID on its pxb's SMMUv3 node, whose
#       identifier must be the emitted identifier=. With -numa nodes and Generic Initiators
#       (the GB200-like guest; a device with acpi-generic-initiator objects is stood in for
#       by $VSMMU_QEMU_GPU_PLACEHOLDER, a 256 GiB 64-bit prefetchable BAR like a GB200 GPU's):
#       the SRAT must hold the RAM in node 0 and one Generic Initiator Affinity structure
#       (type 5, PCI handle = the device's guest BDF) per node of each device, no other; with
#       highmem-mmio-size the host bridges' 64-bit _CRS windows in the DSDT (less MCFG's
#       ECAM) must add up to it, and each GPU stand-in's root port must have a window of its
#       BAR's size inside them.
#   (c) hand-over, every guest (the x86 one as the x86 lab starts it: `qemu-system-x86_64
#       -machine q35 ... $(vsmmu qemu-args ... --format argv)`): --format argv is the JSON
#       args word-split intact; the --fds args with each {vsmmu-...} placeholder replaced by
#       a real fd number (as `vsmmu launch` does) start, the separate -machine
#       memory-backend= merges into the machine, QEMU maps the handed-over memfd, and with
#       the VFIO devices verbatim QEMU takes both fd numbers and stops at its own bind of the
#       (non-VFIO) cdev fd; `vsmmu libvirt-xml` validates against libvirt's domain.rng
#       (xmllint --relaxng), and so must `libvirt-xml --dialect nvidia` once its one
#       NVIDIA-only attribute spelling (ssidSize) is mapped back (NVIDIA publishes no schema);
#       upstream's schema must refuse that spelling as written.
# Everything changed for the TCG run is printed as a NOTE line.
#
# Output: one PASS/FAIL line per check, NOTE lines, and last `qemu-check: N passed, M failed`;
# exit 1 on any failure; exit 75 when the Debian archive cannot be reached (nothing checked).
#
# Environment:
#   VSMMU_QEMU_CACHE        cache dir (default $HOME/.cache/vsmmu-qemu)
#   VSMMU_QEMU_SUITE        Debian suite of the root (default trixie; sid also works)
#   VSMMU_QEMU_BACKPORTS    suite to take qemu-system-arm from (default trixie-backports
#                           for trixie, none otherwise; set empty for none)
#   VSMMU_QEMU_MIRROR       default: the Debian archive this machine's apt uses
#   VSMMU_QEMU_REFRESH=1    rebuild the cached root (e.g. to pick up a newer QEMU)
#   VSMMU_QEMU_PLACEHOLDER  default virtio-rng-pci,disable-legacy=on (no backend, no option ROM)
#   VSMMU_QEMU_GPU_PLACEHOLDER default pci-testdev,membar=256G (for devices with Generic Initiators)
#   VSMMU_QEMU_BOOT_TIMEOUT seconds to wait for the firmware per guest (default 240)
#   VSMMU_QEMU_GUESTS       default "two-vsmmus-four-gpus/train0 cmdqv/vm1 one-guest-one-vsmmu/vm1
#                           devices-without-vsmmu/vm1@examples/hosts/intel-vtd.yaml
#                           gb200-auto/gb200vm@examples/hosts/gb200-tray.yaml" (FILE/GUEST[@HOST])
#   VSMMU_QEMU_HOST         default examples/hosts/grace-2smmu-cmdqv.yaml (for a GUEST without @HOST)
#   VSMMU_QEMU_XML_GUESTS   more guests whose libvirt-xml only is validated (no QEMU run)
#                           (default "several-guests/vm1 several-guests/vm3")
#   VSMMU_BIN               default .build/debug/vsmmu (built with `swift build` if missing)
set -euo pipefail

T0=$(date +%s)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${VSMMU_QEMU_CACHE:-${HOME:-/root}/.cache/vsmmu-qemu}
SUITE=${VSMMU_QEMU_SUITE:-trixie}
if [ "${VSMMU_QEMU_BACKPORTS+set}" = set ]; then
	BACKPORTS=$VSMMU_QEMU_BACKPORTS
elif [ "$SUITE" = trixie ]; then
	BACKPORTS=trixie-backports
else
	BACKPORTS=
fi
MIRROR=$(bash "$HERE/debian-mirror.sh" "${VSMMU_QEMU_MIRROR:-}" 2>&1) || {
	printf 'FAIL setup: %s\nqemu-check: 0 passed, 1 failed\n' "$MIRROR"
	exit 1
}
REFRESH=${VSMMU_QEMU_REFRESH:-0}
PLACEHOLDER=${VSMMU_QEMU_PLACEHOLDER:-virtio-rng-pci,disable-legacy=on}
GPU_PLACEHOLDER=${VSMMU_QEMU_GPU_PLACEHOLDER:-pci-testdev,membar=256G}
BOOT_TIMEOUT=${VSMMU_QEMU_BOOT_TIMEOUT:-240}
GUESTS=${VSMMU_QEMU_GUESTS:-two-vsmmus-four-gpus/train0 cmdqv/vm1 one-guest-one-vsmmu/vm1 devices-without-vsmmu/vm1@examples/hosts/intel-vtd.yaml gb200-auto/gb200vm@examples/hosts/gb200-tray.yaml}
HOSTFILE=${VSMMU_QEMU_HOST:-examples/hosts/grace-2smmu-cmdqv.yaml}
XML_GUESTS=${VSMMU_QEMU_XML_GUESTS:-several-guests/vm1 several-guests/vm3}
VSMMU=${VSMMU_BIN:-$REPO/.build/debug/vsmmu}
PKGS="qemu-system-arm qemu-system-x86 qemu-efi-aarch64 python3 libvirt-common libxml2-utils"
ROOT=$CACHE/root-$SUITE${BACKPORTS:+-$BACKPORTS}
KEY="vsmmu-qemu-root v1 suite=$SUITE backports=$BACKPORTS mirror=$MIRROR pkgs=$PKGS"

say() { printf 'qemu-check: %s\n' "$*"; }
elapsed() { echo $(($(date +%s) - $1)); }
fatal() {
	printf 'FAIL setup: %s\n' "$*"
	printf 'qemu-check: 0 passed, 1 failed\n'
	exit 1
}
# The Debian archive could not be reached: nothing was checked, and nothing of vsmmu
# failed. Exit 75 (EX_TEMPFAIL) so CI can tell this from a failed check.
unreachable() {
	printf 'SKIP setup: %s\n' "$*"
	printf 'qemu-check: 0 passed, 0 failed (not run: the archive is unreachable)\n'
	exit 75
}

[ "$(id -u)" = 0 ] || fatal "run as root (debootstrap, chroot and unshare need it)"
[ -n "$MIRROR" ] || unreachable "no Debian archive in this machine's apt sources; set VSMMU_QEMU_MIRROR"
for c in unshare chroot flock mknod; do
	command -v "$c" >/dev/null || fatal "$c is missing (util-linux/coreutils)"
done

# Run "$@" chrooted into root $1, in a private mount namespace with its own /proc and a
# small /dev (null zero full random urandom tty, shm, and a /dev/iommu stub: -object
# iommufd insists that /dev/iommu exists; nothing here ever reaches an iommufd ioctl).
inroot() {
	local r=$1
	shift
	unshare --mount --propagation private -- /bin/bash -c '
		set -e
		r=$1; shift
		mount -t proc proc "$r/proc"
		mount -t tmpfs -o mode=0755,size=16m vsmmu-qemu-dev "$r/dev"
		mknod -m 666 "$r/dev/null" c 1 3
		mknod -m 666 "$r/dev/zero" c 1 5
		mknod -m 666 "$r/dev/full" c 1 7
		mknod -m 666 "$r/dev/random" c 1 8
		mknod -m 666 "$r/dev/urandom" c 1 9
		mknod -m 666 "$r/dev/tty" c 5 0
		mknod -m 600 "$r/dev/iommu" c 1 3
		mkdir -m 1777 "$r/dev/shm"
		mount -t tmpfs -o size=256m shm "$r/dev/shm"
		ln -s /proc/self/fd "$r/dev/fd"
		ln -s /proc/self/fd/0 "$r/dev/stdin"
		ln -s /proc/self/fd/1 "$r/dev/stdout"
		ln -s /proc/self/fd/2 "$r/dev/stderr"
		exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
			DEBIAN_FRONTEND=noninteractive "$@"
	' vsmmu-qemu-inroot "$r" "$@"
}

# --- 1. the cached Debian root with QEMU ---------------------------------------------------
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
	say "waiting for another qemu-check run (lock $CACHE/.lock)"
	flock -w 1800 9 || fatal "could not lock $CACHE/.lock within 30 minutes"
fi

setup_root() {
	local t new log
	t=$(date +%s)
	new=$ROOT.new
	log=$CACHE/setup.log
	: >"$log"
	say "setup: building a $SUITE root${BACKPORTS:+ (+$BACKPORTS)} with $PKGS in $ROOT (log $log)"
	if ! command -v debootstrap >/dev/null; then
		say "setup: installing debootstrap (apt-get update && apt-get install debootstrap)"
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			debootstrap wget; } >>"$log" 2>&1 ||
			unreachable "apt-get could not install debootstrap: is the Debian archive reachable? (tail of $log: $(tail -2 "$log" | tr '\n' ' '))"
	fi
	if command -v wget >/dev/null; then
		wget -q -T 20 -t 2 -O /dev/null "$MIRROR/dists/$SUITE/InRelease" >>"$log" 2>&1 ||
			unreachable "cannot reach the Debian archive at $MIRROR (dists/$SUITE/InRelease); set VSMMU_QEMU_MIRROR or fix the network"
	fi
	rm -rf "$new"
	say "setup: debootstrap --variant=minbase $SUITE (about 30 s)"
	debootstrap --variant=minbase "$SUITE" "$new" "$MIRROR" >>"$log" 2>&1 ||
		unreachable "debootstrap $SUITE from $MIRROR failed (archive unreachable? see $log: $(tail -2 "$log" | tr '\n' ' '))"
	if [ -n "$BACKPORTS" ]; then
		echo "deb $MIRROR $BACKPORTS main" >"$new/etc/apt/sources.list.d/vsmmu-qemu-backports.list"
	fi
	# the archive this runs against may be a dated snapshot whose Release files are past
	# Valid-Until (sid's already is); signatures are still checked
	echo 'Acquire::Check-Valid-Until "false";' >"$new/etc/apt/apt.conf.d/99vsmmu-qemu-check"
	cp -L /etc/resolv.conf "$new/etc/resolv.conf" 2>/dev/null || true
	say "setup: apt-get install $PKGS${BACKPORTS:+ (-t $BACKPORTS)} in the root"
	inroot "$new" apt-get update -qq >>"$log" 2>&1 ||
		unreachable "apt-get update in the $SUITE root failed (archive unreachable? see $log)"
	# shellcheck disable=SC2086
	inroot "$new" apt-get install -y -qq --no-install-recommends ${BACKPORTS:+-t "$BACKPORTS"} $PKGS >>"$log" 2>&1 ||
		unreachable "apt-get install $PKGS in the $SUITE root failed (see $log: $(tail -2 "$log" | tr '\n' ' '))"
	inroot "$new" apt-get clean >>"$log" 2>&1 || true
	rm -rf "$new/var/lib/apt/lists/"* "$new/usr/share/doc" "$new/usr/share/man" "$new/usr/share/locale"
	[ -x "$new/usr/bin/qemu-system-aarch64" ] || fatal "qemu-system-aarch64 is missing in the root after apt-get install"
	[ -f "$new/usr/share/qemu-efi-aarch64/QEMU_EFI.fd" ] || fatal "QEMU_EFI.fd is missing in the root after apt-get install"
	[ -x "$new/usr/bin/qemu-system-x86_64" ] || fatal "qemu-system-x86_64 is missing in the root after apt-get install"
	[ -f "$new/usr/share/libvirt/schemas/domain.rng" ] || fatal "libvirt's domain.rng is missing in the root after apt-get install"
	{
		echo "$KEY"
		date -u +%FT%TZ
	} >"$new/.vsmmu-qemu-ready"
	rm -rf "$ROOT"
	mv "$new" "$ROOT"
	say "setup: root ready in $(elapsed "$t")s ($(du -sh "$ROOT" | cut -f1))"
}

if [ "$REFRESH" != 1 ] && [ -f "$ROOT/.vsmmu-qemu-ready" ] && [ "$(head -1 "$ROOT/.vsmmu-qemu-ready")" = "$KEY" ]; then
	say "setup: reusing cached root $ROOT (built $(sed -n 2p "$ROOT/.vsmmu-qemu-ready"); VSMMU_QEMU_REFRESH=1 rebuilds)"
else
	setup_root
fi
QVER=$(inroot "$ROOT" qemu-system-aarch64 --version 2>&1 | head -1) || fatal "the cached qemu-system-aarch64 does not run: $QVER"
QPKG=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Version}' qemu-system-arm 2>/dev/null || echo '?')
FWPKG=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Version}' qemu-efi-aarch64 2>/dev/null || echo '?')
LVPKG=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Version}' libvirt-common 2>/dev/null || echo '?')
say "setup: $QVER (Debian qemu-system-arm $QPKG from $SUITE${BACKPORTS:+/$BACKPORTS}), qemu-efi-aarch64 $FWPKG, libvirt-common $LVPKG"

# --- 2. vsmmu output for each guest -----------------------------------------------------------
if [ ! -x "$VSMMU" ]; then
	say "building vsmmu (swift build) because $VSMMU is missing"
	(cd "$REPO" && swift build) || fatal "swift build failed"
	[ -x "$VSMMU" ] || fatal "$VSMMU is still missing after swift build"
fi

W=$ROOT/tmp/qemu-check # seen as /tmp/qemu-check inside the root
rm -rf "$W"
mkdir -p "$W"
cp "$HERE/qemu-check/check.py" "$W/check.py"
jstr() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | sed ':a;N;$!ba;s/\n/\\n/g')"; }
# each output from a fresh state directory, as the plan would allocate
vs() { # vs OUTFILE ARGS...: run vsmmu into $W/$dir/OUTFILE (stderr to OUTFILE.err)
	local out=$1 sd rc
	shift
	sd=$(mktemp -d)
	(cd "$REPO" && "$VSMMU" "$@" --host "$hostfile" --state-dir "$sd") >"$W/$dir/$out" 2>"$W/$dir/$out.err"
	rc=$?
	rm -rf "$sd"
	return $rc
}
entries=()
for spec in $GUESTS; do
	hostfile=$HOSTFILE
	case $spec in *@*) hostfile=${spec#*@} spec=${spec%@*} ;; esac
	file=${spec%/*}
	guest=${spec#*/}
	dir=$(printf '%s' "${file}_$guest" | tr -c 'A-Za-z0-9_.-' '_')
	mkdir -p "$W/$dir"
	say "vsmmu qemu-args / libvirt-xml examples/$file.yaml --guest $guest --host $hostfile"
	set +e
	vs qemu-args.json qemu-args "examples/$file.yaml" --guest "$guest" --format json
	arc=$?
	vs plan.json plan "examples/$file.yaml" --format json
	prc=$?
	vs qemu-args.argv qemu-args "examples/$file.yaml" --guest "$guest" --format argv
	vs qemu-args-fds.json qemu-args "examples/$file.yaml" --guest "$guest" --fds --format json
	vs qemu-args-fds.argv qemu-args "examples/$file.yaml" --guest "$guest" --fds --format argv
	vs libvirt.xml libvirt-xml "examples/$file.yaml" --guest "$guest"
	xrc=$?
	vs libvirt-nvidia.xml libvirt-xml "examples/$file.yaml" --guest "$guest" --dialect nvidia
	nrc=$?
	set -e
	entries+=("{\"label\": $(jstr "$spec"), \"guest\": $(jstr "$guest"), \"dir\": $(jstr "$dir"), \"args_rc\": $arc, \"plan_rc\": $prc, \"xml_rc\": $xrc, \"xml_nvidia_rc\": $nrc, \"xml_nvidia_err\": $(jstr "$(head -c 2000 "$W/$dir/libvirt-nvidia.xml.err")"), \"args_err\": $(jstr "$(head -c 2000 "$W/$dir/qemu-args.json.err")"), \"plan_err\": $(jstr "$(head -c 2000 "$W/$dir/plan.json.err")"), \"xml_err\": $(jstr "$(head -c 2000 "$W/$dir/libvirt.xml.err")")}")
done
xml_entries=()
for spec in $XML_GUESTS; do
	hostfile=$HOSTFILE
	case $spec in *@*) hostfile=${spec#*@} spec=${spec%@*} ;; esac
	file=${spec%/*}
	guest=${spec#*/}
	dir=$(printf '%s' "${file}_$guest" | tr -c 'A-Za-z0-9_.-' '_')
	mkdir -p "$W/$dir"
	say "vsmmu libvirt-xml examples/$file.yaml --guest $guest --host $hostfile"
	set +e
	vs libvirt.xml libvirt-xml "examples/$file.yaml" --guest "$guest"
	xrc=$?
	set -e
	xml_entries+=("{\"label\": $(jstr "$spec"), \"guest\": $(jstr "$guest"), \"dir\": $(jstr "$dir"), \"xml_rc\": $xrc, \"xml_err\": $(jstr "$(head -c 2000 "$W/$dir/libvirt.xml.err")")}")
done
{
	echo "{\"qemu\": \"/usr/bin/qemu-system-aarch64\","
	echo " \"firmware\": \"/usr/share/qemu-efi-aarch64/QEMU_EFI.fd\","
	echo " \"firmware_version\": $(jstr "qemu-efi-aarch64 $FWPKG"),"
	echo " \"qemu_x86\": \"/usr/bin/qemu-system-x86_64\","
	echo " \"libvirt_rng\": \"/usr/share/libvirt/schemas/domain.rng\","
	echo " \"libvirt_version\": $(jstr "$LVPKG"),"
	echo " \"placeholder\": $(jstr "$PLACEHOLDER"),"
	echo " \"gpu_placeholder\": $(jstr "$GPU_PLACEHOLDER"),"
	echo " \"boot_timeout\": $BOOT_TIMEOUT,"
	echo " \"t0\": $T0,"
	echo " \"guests\": ["
	sep=
	for e in "${entries[@]}"; do
		printf '%s  %s\n' "$sep" "$e"
		sep=,
	done
	echo " ],"
	echo " \"libvirt_only\": ["
	sep=
	for e in "${xml_entries[@]}"; do
		printf '%s  %s\n' "$sep" "$e"
		sep=,
	done
	echo " ]}"
} | tr -d '\t' | sed 's/\r//g' >"$W/manifest.json"

# --- 3. the checks -----------------------------------------------------------------------------
say "running the checks in the root (logs: $W)"
set +e
inroot "$ROOT" python3 -u /tmp/qemu-check/check.py /tmp/qemu-check 2>"$W/check.err" | tee "$W/check.out"
rc=${PIPESTATUS[0]}
set -e
summary=$(tail -1 "$W/check.out" | grep -E '^qemu-check: [0-9]+ passed, [0-9]+ failed$' || true)
if [ -s "$W/check.err" ]; then
	echo "check.py stderr:"
	sed 's/^/    /' "$W/check.err"
	[ -z "$summary" ] || echo "$summary"
fi
if [ -z "$summary" ]; then
	printf 'FAIL check.py ended without a summary (exit %s)\n' "$rc"
	np=$(grep -c '^PASS ' "$W/check.out" || true)
	nf=$(grep -c '^FAIL ' "$W/check.out" || true)
	printf 'qemu-check: %d passed, %d failed\n' "$np" "$((nf + 1))"
	exit 1
fi
[ "$rc" = 0 ] || exit 1
