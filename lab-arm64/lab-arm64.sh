#!/usr/bin/env bash
# vsmmu arm64 lab: the real arm-smmu-v3 iommufd driver in an aarch64 QEMU guest, driven
# by the HOST's vsmmu through the remote executor (docs/remote-executor.md).
#
# Cross-builds a small arm64 Linux 7.2 (cached by the sha256 of lab-arm64.config), boots
# it under qemu-system-aarch64 11 (Debian trixie-backports, TCG) on the virt machine
# (emulated SMMUv3, an `edu` PCI device behind it) with a virtio-serial port (virtio-mmio,
# not behind the SMMU) named org.vsmmu.remote, served in the guest by the static aarch64
# `vsmmu-remote`. On the host, QEMU exposes the port as a Unix socket; once it answers HELLO, every executable in
# scenarios/ runs with VSMMU_REMOTE=unix:<socket>, LAB_BOOT, LAB_EXPECT, VSMMU, VSMMU_SRC,
# LAB_WORK, LAB_DIR, LAB_PCI_ID.
# Then BYE, and QEMU must exit.
#
# Boots (LAB_BOOTS, default "acpi acpi-canwbs s1only kvm"), one QEMU each:
#   acpi         UEFI + ACPI, QEMU's IORT (no CANWBS), no S2FWB: nesting, the vIOMMU gate
#                is closed (LAB_EXPECT=no-coherent). Dumps the IORT for acpi-canwbs.
#   acpi-canwbs  the same with the IORT upgraded from the initrd with CANWBS set: the gate
#                is open (LAB_EXPECT=viommu). The recipe's C probe runs first as a
#                boot-health check (then the device goes back to no driver).
#   s1only       machine virt-9.1, device tree: a stage-1-only SMMU (LAB_EXPECT=no-nesting).
#   kvm          acpi-canwbs with the virtualization extensions (virtualization=on, 2 CPUs,
#                3 GiB): the guest has KVM, Debian's arm64 QEMU 11 (/opt/qemu) and a nested
#                guest (/l2: this kernel, l2-init.sh, QEMU_EFI.fd); lab.byhand first boots it
#                the recipe's way in init, then only LAB_KVM_SCENARIOS (default: launch) run.
#   64k          a second kernel, the same fragment with 64 KiB pages (CONFIG_ARM64_64K_PAGES,
#                cached apart), device tree on virt: only LAB_64K_SCENARIOS (default
#                fidelity, pagesize: IOVA alignment 0x10000, kernel.pageSize 65536).
# The last line is "lab-arm64: N passed, M failed"; exit 0 iff M = 0 and every boot ran.
# See README.md beside this file.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_CACHE=${LAB_CACHE:-$HOME/.cache/vsmmu-lab-arm64}   # kept between runs
LAB_WORK=${LAB_WORK:-${TMPDIR:-/tmp}/lab-arm64}         # disposable (~2.3 GB while building)
LAB_JOBS=${LAB_JOBS:-2}
LAB_KVER=${LAB_KVER:-7.2}
LAB_SUITE=${LAB_SUITE:-sid}
LAB_MIRROR=${LAB_MIRROR:-}                              # default: the Debian archive of this machine's apt
LAB_SRC_DEB=${LAB_SRC_DEB:-}                            # a linux-source-*.deb already on disk
LAB_SRC_DIRS=${LAB_SRC_DIRS:-$LAB_CACHE/src $HOME/.cache/vsmmu-lab/src}   # where to look for one
LAB_MEM=${LAB_MEM:-1G}
LAB_CPU=${LAB_CPU:-max,pauth-impdef=on}                 # impdef pointer auth: much faster under TCG
LAB_PCI_DEV=${LAB_PCI_DEV:-edu}
LAB_PCI_ID=${LAB_PCI_ID:-1234:11e8}
LAB_BOOTS=${LAB_BOOTS:-acpi acpi-canwbs s1only kvm 64k}
LAB_KVM_SCENARIOS=${LAB_KVM_SCENARIOS:-launch}           # the only scenarios of boot kvm
LAB_64K_SCENARIOS=${LAB_64K_SCENARIOS:-fidelity pagesize}         # the only scenarios of boot 64k
LAB_KVM_MEM=${LAB_KVM_MEM:-3G}                          # boot kvm: L1 RAM (the nested guest has 256 MiB)
LAB_KVM_HELLO_TIMEOUT=${LAB_KVM_HELLO_TIMEOUT:-900}      # boot kvm: the by-hand nested boot runs before HELLO
LAB_BOOT_TIMEOUT=${LAB_BOOT_TIMEOUT:-1800}              # whole QEMU run, scenarios included
LAB_HELLO_TIMEOUT=${LAB_HELLO_TIMEOUT:-180}             # boot until the executor answers HELLO
LAB_POWEROFF_TIMEOUT=${LAB_POWEROFF_TIMEOUT:-60}        # BYE until QEMU has exited
LAB_SCENARIO_TIMEOUT=${LAB_SCENARIO_TIMEOUT:-600}       # per scenario
LAB_SCENARIO_DIR=${LAB_SCENARIO_DIR:-$LAB_DIR/scenarios}   # where the scenarios are
LAB_SCENARIOS=${LAB_SCENARIOS:-}                        # names in it to run (default: all)
LAB_EXPECT_OVERRIDE=${LAB_EXPECT_OVERRIDE:-}            # lie about the boots' LAB_EXPECT (negative tests)
LAB_PROBE=${LAB_PROBE:-1}                               # the C probe as acpi-canwbs health check
LAB_APPEND=${LAB_APPEND:-}                              # more kernel command line (e.g. lab.keepbound)
LAB_REBUILD=${LAB_REBUILD:-0}
LAB_KEEP_BUILD=${LAB_KEEP_BUILD:-0}
CROSS=${CROSS:-aarch64-linux-gnu-}
VSMMU_SRC=${VSMMU_SRC:-$(cd "$LAB_DIR/.." && pwd)}      # the vsmmu package (Swift + Sources/vsmmu-remote)
VSMMU=${VSMMU:-}                                        # a host vsmmu binary; empty: swift build it

FRAG=$LAB_DIR/lab-arm64.config
HASH=$(sha256sum "$FRAG" | cut -c1-16)
KCACHE=$LAB_CACHE/kernel/$LAB_KVER-$HASH
KMAKE=(ARCH=arm64 CROSS_COMPILE="$CROSS")
TIMES=()
T_START=$(date +%s.%N)

say() { printf '\n=== %s\n' "$*"; }
die() { printf 'LAB FAILED: %s\n' "$*" >&2; echo "lab-arm64: 0 passed, 1 failed"; exit 1; }
now() { date +%s.%N; }
took() {
	local s; s=$(awk -v a="$2" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
	TIMES+=("$(printf '%-26s %7ss' "$1" "$s")"); echo "--- $1: ${s}s"
}

mkdir -p "$LAB_CACHE" "$LAB_WORK"

# --- 1. host packages -----------------------------------------------------------------
deps() {
	local t; t=$(now)
	local pkgs=(build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils
		gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
	local missing=()
	for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	if ((${#missing[@]})); then
		say "installing ${missing[*]}"
		[ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	took "host packages" "$t"
}

# --- 2. QEMU 11 and the guest-side packages, unpacked into the cache (no system install) ----
#   Debian trixie(-backports) through scripts/debian-closure.sh (private apt configuration,
#   this machine's mirror, the whole dependency closure): amd64 qemu-system-arm +
#   qemu-efi-aarch64 (the outer QEMU, run through its own loader: scripts/qemu-bundle.sh),
#   and arm64 qemu-system-arm + qemu-efi-aarch64 + busybox-static (the guests' busybox, and
#   boot kvm's QEMU in the guest).
QEMU=; QEMU_ENV=(); EFI_FW=; BUSYBOX=; ARM64_ROOT=
guest_pkgs() {
	local t; t=$(now)
	local h=$LAB_CACHE/qemu-amd64 a=$LAB_CACHE/qemu-arm64
	bash "$VSMMU_SRC/scripts/debian-closure.sh" amd64 "$h" qemu-system-arm qemu-efi-aarch64 || die "fetching the amd64 QEMU failed"
	bash "$VSMMU_SRC/scripts/debian-closure.sh" arm64 "$a" qemu-system-arm qemu-efi-aarch64 busybox-static || die "fetching the arm64 packages failed"
	bash "$VSMMU_SRC/scripts/qemu-bundle.sh" "$h/root" qemu-system-aarch64 "$LAB_WORK/host-qemu" "$LAB_WORK/host-qemu" readelf >/dev/null ||
		die "bundling the amd64 QEMU failed"
	QEMU=$LAB_WORK/host-qemu/bin/qemu-system-aarch64
	EFI_FW=$h/root/usr/share/qemu-efi-aarch64/QEMU_EFI.fd
	ARM64_ROOT=$a/root
	BUSYBOX=$a/root/usr/bin/busybox
	[ -x "$BUSYBOX" ] || BUSYBOX=$a/root/bin/busybox
	"$QEMU" --version | head -1
	[ -f "$EFI_FW" ] && [ -x "$BUSYBOX" ] || die "QEMU_EFI.fd or busybox missing from the unpacked packages"
	took "guest packages" "$t"
}

# --- 3. kernel source + build ---------------------------------------------------------
fetch_source() {
	local t deb d; t=$(now); deb=${LAB_SRC_DEB:-}
	if [ -z "$deb" ]; then
		for d in $LAB_SRC_DIRS; do
			deb=$(ls -1 "$d"/linux-source-"$LAB_KVER"_*_all.deb 2>/dev/null | tail -1 || true)
			[ -n "$deb" ] && break
		done
	fi
	if [ -z "$deb" ]; then
		say "downloading linux-source-$LAB_KVER from $LAB_SUITE"
		LAB_MIRROR=$(bash "$VSMMU_SRC/scripts/debian-mirror.sh" "$LAB_MIRROR") || die "no Debian mirror"
		d=$LAB_CACHE/src; mkdir -p "$d"
		local a=$LAB_WORK/apt; mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
		echo "deb $LAB_MIRROR $LAB_SUITE main" >"$a/sources.list"
		local o=(-o "Dir::Etc::sourcelist=$a/sources.list" -o Dir::Etc::sourceparts=/dev/null
			-o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache")
		apt-get "${o[@]}" update -qq
		(cd "$d" && apt-get "${o[@]}" download "linux-source-$LAB_KVER")
		deb=$(ls -1 "$d"/linux-source-"$LAB_KVER"_*_all.deb | tail -1)
	fi
	SRC_DEB=$deb
	SRC_VERSION=$(dpkg-deb -f "$deb" Version)
	echo "source: $(basename "$deb") ($SRC_VERSION)"
	took "source" "$t"
}

extract_source() {
	local t; t=$(now)
	SRC=$LAB_WORK/linux-$SRC_VERSION
	if [ ! -f "$SRC/.lab-extracted" ]; then
		say "extracting into $SRC"
		rm -rf "$SRC" "$LAB_WORK/deb"; mkdir -p "$LAB_WORK/deb"
		dpkg-deb --fsys-tarfile "$SRC_DEB" | tar -x -C "$LAB_WORK/deb" "./usr/src/linux-source-$LAB_KVER.tar.xz"
		tar -xJf "$LAB_WORK/deb/usr/src/linux-source-$LAB_KVER.tar.xz" -C "$LAB_WORK"
		mv "$LAB_WORK/linux-source-$LAB_KVER" "$SRC"
		rm -rf "$LAB_WORK/deb"
		touch "$SRC/.lab-extracted"
	fi
	took "source extract" "$t"
}

verify_config() {
	local cfg=$1 bad=0 line k v
	while IFS= read -r line; do
		case $line in '' | '#'*) continue ;; esac
		k=${line%%=*}; v=${line#*=}
		if [ "$v" = n ]; then
			grep -q "^$k=" "$cfg" && { echo "config: $line but got $(grep "^$k=" "$cfg")"; bad=1; }
		else
			grep -qxF "$line" "$cfg" || { echo "config: $line but got '$(grep -E "^$k=|^# $k is not" "$cfg" || true)'"; bad=1; }
		fi
	done <"$FRAG"
	return $bad
}

kernel() {
	if [ "$LAB_REBUILD" != 1 ] && [ -f "$KCACHE/Image" ] && [ -f "$KCACHE/include/linux/iommufd.h" ]; then
		say "kernel cached: $KCACHE ($(cat "$KCACHE/source-version"))"
		TIMES+=("$(printf '%-26s %7s' "kernel" cached)")
		return
	fi
	fetch_source
	extract_source
	local t; t=$(now)
	local B=$LAB_WORK/build-$LAB_KVER-$HASH
	mkdir -p "$B"
	say "configuring (arm64 tinyconfig + lab-arm64.config) in $B"
	make -s -C "$SRC" O="$B" "${KMAKE[@]}" tinyconfig >"$LAB_WORK/config.log" 2>&1
	"$SRC/scripts/kconfig/merge_config.sh" -m -O "$B" "$B/.config" "$FRAG" >>"$LAB_WORK/config.log" 2>&1
	make -s -C "$SRC" O="$B" "${KMAKE[@]}" olddefconfig >>"$LAB_WORK/config.log" 2>&1
	verify_config "$B/.config" || die "kernel config does not hold the fragment"
	took "kernel config" "$t"

	t=$(now)
	say "building Image with -j$LAB_JOBS (log: $LAB_WORK/build.log)"
	if ! make -C "$SRC" O="$B" "${KMAKE[@]}" -j"$LAB_JOBS" Image >"$LAB_WORK/build.log" 2>&1; then
		tail -30 "$LAB_WORK/build.log"; die "kernel build failed"
	fi
	took "kernel build" "$t"

	t=$(now)
	make -s -C "$SRC" O="$B" "${KMAKE[@]}" headers >>"$LAB_WORK/build.log" 2>&1 || die "make headers failed"
	rm -rf "$KCACHE.tmp"; mkdir -p "$KCACHE.tmp"
	cp "$B/arch/arm64/boot/Image" "$B/.config" "$KCACHE.tmp/"
	cp -r "$B/usr/include" "$KCACHE.tmp/include"
	cp "$FRAG" "$KCACHE.tmp/lab-arm64.config"
	echo "$SRC_VERSION" >"$KCACHE.tmp/source-version"
	rm -rf "$KCACHE"; mv "$KCACHE.tmp" "$KCACHE"
	[ "$LAB_KEEP_BUILD" = 1 ] || rm -rf "$B" "$SRC"
	took "kernel headers+cache" "$t"
}

# The 64 KiB-page kernel (boot 64k): the same fragment with CONFIG_ARM64_64K_PAGES in place
# of 4K pages, built by kernel() with its own fragment, hash and cache entry.
FRAG64=$LAB_WORK/lab-arm64-64k.config
sed 's/^CONFIG_ARM64_4K_PAGES=y$/CONFIG_ARM64_64K_PAGES=y/' "$FRAG" >"$FRAG64"
grep -qx 'CONFIG_ARM64_64K_PAGES=y' "$FRAG64" || die "lab-arm64.config has no CONFIG_ARM64_4K_PAGES=y line to turn into 64K pages"
KCACHE64=$LAB_CACHE/kernel/$LAB_KVER-64k-$(sha256sum "$FRAG64" | cut -c1-16)
kernel_64k() {
	local save=("$FRAG" "$HASH" "$KCACHE")
	FRAG=$FRAG64 HASH=64k-${KCACHE64##*-} KCACHE=$KCACHE64
	kernel
	FRAG=${save[0]} HASH=${save[1]} KCACHE=${save[2]}
}

# --- 4. programs: vsmmu-remote + probe (aarch64, static), iort-canwbs and vsmmu (host) ----
programs() {
	local t; t=$(now)
	local P=$LAB_WORK/progs; mkdir -p "$P"
	"${CROSS}gcc" -static -O2 -I "$VSMMU_SRC/Sources/CVsmmuUAPI/include" -o "$P/vsmmu-remote" "$VSMMU_SRC/Sources/CVsmmuUAPI/process.c" \
		"$VSMMU_SRC/Sources/vsmmu-remote/main.c" || die "vsmmu-remote does not build"
	"${CROSS}gcc" -static -O1 -Wall -Werror -I"$KCACHE/include" -o "$P/smmuv3-probe" "$LAB_DIR/smmuv3-probe.c"
	gcc -O1 -Wall -Werror -o "$P/iort-canwbs" "$LAB_DIR/iort-canwbs.c"
	took "vsmmu-remote+probe" "$t"
	t=$(now)
	if [ -z "$VSMMU" ]; then
		say "building the host vsmmu (swift build --product vsmmu in $VSMMU_SRC)"
		(cd "$VSMMU_SRC" && swift build --product vsmmu >"$LAB_WORK/swift-build.log" 2>&1) ||
			{ tail -30 "$LAB_WORK/swift-build.log"; die "swift build failed"; }
		# a private copy: others may rebuild .build while the scenarios run
		cp "$(cd "$VSMMU_SRC" && swift build --show-bin-path)/vsmmu" "$P/vsmmu"
		VSMMU=$P/vsmmu
	fi
	[ -x "$VSMMU" ] || die "VSMMU=$VSMMU is not executable"
	took "host vsmmu" "$t"
}

# --- 5. initramfs --------------------------------------------------------------------------
initramfs() { # initramfs OUT [IORT.aml [kvm]]
	local out=$1 iort=${2:-} kvm=${3:-} t; t=$(now)
	local R=$LAB_WORK/rootfs P=$LAB_WORK/progs
	rm -rf "$R"; mkdir -p "$R"/{bin,sbin,lab,proc,sys,dev,tmp,run,etc}
	cp "$BUSYBOX" "$R/bin/busybox"
	install -m755 "$LAB_DIR/init.sh" "$R/init"
	cp "$P/smmuv3-probe" "$P/vsmmu-remote" "$R/bin/"
	if [ -n "$kvm" ]; then
		# boot kvm: arm64 QEMU 11 + its closure under /opt/qemu, the nested guest in /l2
		bash "$VSMMU_SRC/scripts/qemu-bundle.sh" "$ARM64_ROOT" qemu-system-aarch64 "$R/opt/qemu" /opt/qemu \
			"${CROSS}readelf" | sed 's/^/    /' || die "bundling the arm64 QEMU failed"
		install -m644 "$LAB_DIR/byhand.sh" "$R/lab/byhand.sh"
		mkdir -p "$R/l2"
		cp "$KCACHE/Image" "$R/l2/Image"
		cp "$ARM64_ROOT/usr/share/qemu-efi-aarch64/QEMU_EFI.fd" "$R/l2/QEMU_EFI.fd"
		local L=$LAB_WORK/l2root
		rm -rf "$L"; mkdir -p "$L"/{bin,proc,sys,dev,tmp}
		cp "$BUSYBOX" "$L/bin/busybox"
		install -m755 "$LAB_DIR/l2-init.sh" "$L/init"
		(cd "$L" && find . -print0 | cpio --null -o -H newc --quiet) >"$R/l2/initrd.cpio"
	fi
	if [ -n "$iort" ]; then
		mkdir -p "$R/kernel/firmware/acpi"
		cp "$iort" "$R/kernel/firmware/acpi/IORT.aml"
	fi
	# kernel/firmware/acpi must come first in the (uncompressed) archive for the table upgrade
	(cd "$R" && { if [ -d kernel ]; then find kernel -print0; fi; find . -path ./kernel -prune -o -print0; } |
		cpio --null -o -H newc --quiet) >"$out"
	took "initramfs $(basename "$out")" "$t"
}

# --- 6. boots + scenarios -------------------------------------------------------------------
NPASS=0 NFAIL=0 FAILED=()
pass() { NPASS=$((NPASS + 1)); echo "LAB-CHECK PASS $1"; }
fail() { NFAIL=$((NFAIL + 1)); FAILED+=("$1"); echo "LAB-CHECK FAIL $1"; }
count() { # count PREFIX FILE: tally the LAB-CHECK lines of FILE
	local prefix=$1 file=$2 n
	n=$(tr -d '\r' <"$file" | grep -c '^LAB-CHECK PASS ' || true); NPASS=$((NPASS + n))
	while read -r n; do NFAIL=$((NFAIL + 1)); FAILED+=("$prefix$n"); done < <(tr -d '\r' <"$file" | sed -n 's/^LAB-CHECK FAIL //p')
}

QPID=
BOOT_SMP=1 BOOT_MEM=$LAB_MEM BOOT_ACCEL=tcg BOOT_DEV=$LAB_PCI_DEV  # boot kvm changes them
BOOT_KERNEL=$KCACHE/Image                                          # boot 64k changes it
boot_start() { # boot_start BOOT FW MACHINE INITRD LOG APPEND
	local boot=$1 fw=$2 machine=$3 initrd=$4 log=$5 extra=$6 bios=()
	local append="console=ttyAMA0 panic=-1 lab.boot=$boot lab.dev=$LAB_PCI_ID $extra $LAB_APPEND"
	[ "$fw" = acpi ] && { bios=(-bios "$EFI_FW"); append="$append acpi=force"; }
	local rs=$LAB_WORK/remote-$boot.sock cs=$LAB_WORK/ctl-$boot.sock
	rm -f "$rs" "$cs"
	local cmd=("${QEMU_ENV[@]}" "$QEMU" -machine "$machine,gic-version=3,iommu=smmuv3" -accel "$BOOT_ACCEL"
		-cpu "$LAB_CPU" -smp "$BOOT_SMP" -m "$BOOT_MEM" -nodefaults -display none -monitor none
		-serial stdio -no-reboot "${bios[@]}" -device "$BOOT_DEV"
		-device virtio-serial-device
		-chardev "socket,id=remote,path=$rs,server=on,wait=off"
		-device virtserialport,chardev=remote,name=org.vsmmu.remote
		-chardev "socket,id=ctl,path=$cs,server=on,wait=off"
		-device virtserialport,chardev=ctl,name=org.vsmmu.lab
		-kernel "$BOOT_KERNEL" -initrd "$initrd" -append "$append")
	echo "${cmd[*]}" >"$log"
	timeout "$LAB_BOOT_TIMEOUT" "${cmd[@]}" </dev/null >>"$log" 2>&1 &
	QPID=$!
}

qemu_wait() { # qemu_wait SECONDS: 0 once QEMU ($QPID) has exited
	local end=$((SECONDS + $1))
	while kill -0 "$QPID" 2>/dev/null; do
		[ $SECONDS -lt $end ] || return 1
		sleep 0.2
	done
	wait "$QPID" 2>/dev/null || true
	return 0
}

show() { # show LOG
	grep -aE '^(LAB-INIT|LAB: |LAB-PROBE|LAB-CHECK|LAB-REMOTE (ready|done|exit)|LAB-EXIT)' "$1" | tr -d '\r' | sed 's/^/    guest: /' || true
}

iort_from() { # iort_from LOG OUT
	tr -d '\r' <"$1" | sed -n '/^LAB-IORT-BEGIN$/,/^LAB-IORT-END$/p' | sed '1d;$d' | base64 -d >"$2" 2>/dev/null || true
}

run_scenarios() { # run_scenarios BOOT EXPECT SOCK
	local boot=$1 expect=$2 sock=$3 s name out rc t
	local sd=$LAB_WORK/scen-$boot; rm -rf "$sd"; mkdir -p "$sd"
	for s in "$LAB_SCENARIO_DIR"/*; do
		[ -f "$s" ] && [ -x "$s" ] || continue
		name=${s##*/}
		if [ -n "$LAB_SCENARIOS" ] && ! [[ " $LAB_SCENARIOS " == *" $name "* ]]; then continue; fi
		if [ "$boot" = kvm ] && ! [[ " $LAB_KVM_SCENARIOS " == *" $name "* ]]; then continue; fi
		if [ "$boot" = 64k ] && ! [[ " $LAB_64K_SCENARIOS " == *" $name "* ]]; then continue; fi
		out=$sd/$name.log; mkdir -p "$sd/$name"
		t=$(now)
		echo "--- scenario $name on $boot (LAB_EXPECT=$expect, log $out)"
		rc=0
		env VSMMU_REMOTE="unix:$sock" LAB_BOOT="$boot" LAB_EXPECT="$expect" VSMMU="$VSMMU" \
			LAB_WORK="$sd/$name" LAB_DIR="$LAB_DIR" LAB_PCI_ID="$LAB_PCI_ID" VSMMU_SRC="$VSMMU_SRC" \
			LAB_BOOT_LOG="$LAB_WORK/boot-$boot.log" \
			timeout "$LAB_SCENARIO_TIMEOUT" "$s" >"$out" 2>&1 </dev/null || rc=$?
		grep -aE '^(LAB-CHECK|LAB-SKIP|LAB-INFO)' "$out" | sed 's/^/    /' || true
		count "$boot/" "$out"
		if [ $rc != 0 ] && ! grep -q '^LAB-CHECK FAIL ' "$out"; then
			fail "$boot/$name-exit-$rc"; tail -15 "$out" | sed 's/^/    | /'
		elif grep -q '^LAB-CHECK FAIL ' "$out"; then
			echo "    (last lines of $out:)"; tail -25 "$out" | sed 's/^/    | /'
		fi
		took "  $boot/$name" "$t"
	done
}

boots() {
	local boot fw machine expect extra initrd log t sock ctl
	local iort_raw=$LAB_WORK/IORT.qemu.aml iort_canwbs=$LAB_WORK/IORT.canwbs.aml

	# The IORT with the CANWBS flag set on the SMMU's named component (the vIOMMU gate opens):
	# QEMU's own IORT, dumped once by a dump-only acpi boot, patched by iort-canwbs. Writes only
	# the files $iort_raw and $iort_canwbs; fails when no IORT could be dumped.
	canwbs_iort() {
		if [ ! -s "$iort_raw" ]; then
			echo "no IORT dumped yet: a dump-only acpi boot first"
			boot_start acpi-dump acpi virt "$initrd" "$LAB_WORK/boot-acpi-dump.log" "lab.dumpiort lab.dumponly"
			qemu_wait 300 || { kill "$QPID" 2>/dev/null; true; }
			iort_from "$LAB_WORK/boot-acpi-dump.log" "$iort_raw"
		fi
		[ -s "$iort_raw" ] || return 1
		"$LAB_WORK/progs/iort-canwbs" "$iort_raw" "$iort_canwbs" | sed 's/^/    /'
	}

	for boot in $LAB_BOOTS; do
		log=$LAB_WORK/boot-$boot.log initrd=$LAB_WORK/initramfs.cpio
		case $boot in
		acpi) fw=acpi machine=virt expect=no-coherent extra="lab.dumpiort" ;;
		acpi-canwbs)
			fw=acpi machine=virt expect=viommu extra="lab.viommu=yes"
			[ "$LAB_PROBE" = 1 ] && extra="$extra lab.probe"
			canwbs_iort || { fail "$boot/boot-iort"; continue; }
			initrd=$LAB_WORK/initramfs-canwbs.cpio
			initramfs "$initrd" "$iort_canwbs" ;;
		s1only) fw=dt machine=${LAB_S1_MACHINE:-virt-9.1} expect=no-nesting extra= ;;
		kvm)
			fw=acpi machine=virt,virtualization=on expect=viommu extra="lab.viommu=yes lab.byhand"
			canwbs_iort || { fail "$boot/boot-iort"; continue; }
			initrd=$LAB_WORK/initramfs-kvm.cpio
			initramfs "$initrd" "$iort_canwbs" kvm
			# 2 vCPUs in parallel (MTTCG); the outer edu's DMA mask widened for the nested
			# guest's bypass DMA check (its RAM sits above edu's default 28 bits)
			BOOT_SMP=2 BOOT_MEM=$LAB_KVM_MEM BOOT_ACCEL=tcg,thread=multi BOOT_DEV=$LAB_PCI_DEV,dma_mask=0xffffffffffffffff ;;
		64k) fw=dt machine=virt expect=page64k extra= ;;
		*) fail "$boot/unknown-boot"; continue ;;
		esac
		[ -n "$LAB_EXPECT_OVERRIDE" ] && expect=$LAB_EXPECT_OVERRIDE
		[ "$boot" = kvm ] || { BOOT_SMP=1 BOOT_MEM=$LAB_MEM BOOT_ACCEL=tcg BOOT_DEV=$LAB_PCI_DEV; }
		BOOT_KERNEL=$KCACHE/Image
		[ "$boot" = 64k ] && BOOT_KERNEL=$KCACHE64/Image
		sock=$LAB_WORK/remote-$boot.sock ctl=$LAB_WORK/ctl-$boot.sock
		t=$(now)
		say "booting $boot (machine $machine, $fw, device $LAB_PCI_DEV, LAB_EXPECT=$expect) -> $log"
		boot_start "$boot" "$fw" "$machine" "$initrd" "$log" "$extra"
		# the executor answers HELLO once the guest is up
		local hello= hto=$LAB_HELLO_TIMEOUT
		[ "$boot" = kvm ] && hto=$LAB_KVM_HELLO_TIMEOUT
		local end=$((SECONDS + hto))
		while kill -0 "$QPID" 2>/dev/null && [ $SECONDS -lt $end ]; do
			if hello=$(python3 "$LAB_DIR/remote.py" "$sock" wait 5 2>/dev/null); then break; fi
			hello=
		done
		took "$boot: boot to HELLO" "$t"
		if [ -z "$hello" ]; then
			fail "$boot/hello"
			kill "$QPID" 2>/dev/null || true; qemu_wait 10 || true
			show "$log"; echo "    (last lines of $log:)"; tail -20 "$log" | sed 's/^/    | /'
			continue
		fi
		pass "$boot/hello"; echo "    $hello"
		run_scenarios "$boot" "$expect" "$sock"
		t=$(now)
		if timeout $((LAB_POWEROFF_TIMEOUT + 10)) python3 "$LAB_DIR/remote.py" "$sock" bye "$ctl" "$LAB_POWEROFF_TIMEOUT" >/dev/null &&
			qemu_wait "$LAB_POWEROFF_TIMEOUT"; then
			pass "$boot/bye-poweroff"
		else
			fail "$boot/bye-poweroff"; kill "$QPID" 2>/dev/null || true; qemu_wait 10 || true
		fi
		took "$boot: BYE to exit" "$t"
		[ "$boot" = acpi ] && { iort_from "$log" "$iort_raw"; echo "    IORT dumped: $(stat -c %s "$iort_raw" 2>/dev/null || echo 0) bytes"; }
		show "$log"
		count "$boot/" "$log"
		if grep -aq '^LAB-EXIT=' "$log"; then pass "$boot/guest-exit"; else fail "$boot/guest-exit"; tail -20 "$log" | sed 's/^/    | /'; fi
	done
}

deps
guest_pkgs
kernel
[[ " $LAB_BOOTS " == *" 64k "* ]] && kernel_64k
programs
initramfs "$LAB_WORK/initramfs.cpio"
boots
took "total" "$T_START"
say "timings"
printf '  %s\n' "${TIMES[@]}" | tee "$LAB_WORK/timings.txt"
if ((NFAIL)); then printf 'failed: %s\n' "${FAILED[@]}"; fi
echo "lab-arm64: $NPASS passed, $NFAIL failed"
[ "$NFAIL" = 0 ]
