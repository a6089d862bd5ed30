#!/bin/busybox sh
# /init of the vsmmu arm64 lab initramfs (busybox-static, aarch64).
#
# 1. mounts; optionally dumps the IORT (lab.dumpiort) and runs the recipe's C probe as a
#    boot-health check (lab.probe; it binds the PCI device to vfio-pci, so the device is
#    unbound and driver_override cleared afterwards);
# 2. leaves the PCI device (lab.dev=VENDOR:DEVICE, default edu) on NO driver;
# 3. serves the host over the virtio-serial port named org.vsmmu.remote with
#    /bin/vsmmu-remote (stdin/stdout on the port, which init keeps open). A virtio port
#    reads EOF whenever no host client is connected, so the executor ends with each client
#    (closing everything that client made) and is started again for the next one;
#    In boot kvm (/opt/qemu holds Debian's arm64 QEMU 11, /l2 the nested guest) the executor
#    may start that QEMU (SPAWN, --vmm) and every VMM's output is relayed to the console as
#    "L1-VMM: " lines; with lab.byhand, before serving, QEMU takes edu the recipe's way
#    (fds opened here, the accelerated vSMMU by hand) and boots the nested guest once;
# 4. once the host has written "poweroff" on the control port (org.vsmmu.lab) and the
#    executor has ended (BYE), prints LAB-EXIT=<failed guest checks> and powers off.
# Every guest-side check prints "LAB-CHECK PASS|FAIL name" (counted by lab-arm64.sh).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm; mount -t tmpfs tmpfs /dev/shm
echo "LAB-INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) machine=$(uname -m)"

fail=0
check() { # check NAME CMD...
	name=$1; shift
	if "$@"; then echo "LAB-CHECK PASS $name"; else echo "LAB-CHECK FAIL $name"; fail=$((fail + 1)); fi
}
want=1234:11e8 boot=? dumpiort=0 dumponly=0 keepbound=0 probe=0 viommu=auto byhand=0
for w in $(cat /proc/cmdline); do
	case $w in
	lab.dev=*) want=${w#lab.dev=} ;;
	lab.boot=*) boot=${w#lab.boot=} ;;
	lab.viommu=*) viommu=${w#lab.viommu=} ;;
	lab.dumpiort) dumpiort=1 ;;
	lab.probe) probe=1 ;;
	lab.dumponly) dumponly=1 ;;
	lab.keepbound) keepbound=1 ;;
	lab.byhand) byhand=1 ;;
	esac
done
vendor=0x${want%%:*} device=0x${want#*:}
fw=dt; [ -d /sys/firmware/acpi/tables ] && fw=acpi
echo "LAB: boot=$boot firmware=$fw iommus: $(ls /sys/class/iommu 2>/dev/null | tr '\n' ' ')"
dmesg | grep -i -E 'smmu|Table Upgrade|virtio' | sed 's/^/LAB-DMESG: /'
if [ "$dumpiort" = 1 ] && [ -r /sys/firmware/acpi/tables/IORT ]; then
	echo "LAB-IORT-BEGIN"; base64 /sys/firmware/acpi/tables/IORT; echo "LAB-IORT-END"
fi
# lab.dumponly: only the IORT (lab-arm64.sh needs it for acpi-canwbs when acpi did not run)
[ "$dumponly" = 1 ] && { echo "LAB-EXIT=0 dump only"; sync; poweroff -f; }

bdf=
for d in /sys/bus/pci/devices/*; do
	if [ "$(cat $d/vendor)" = "$vendor" ] && [ "$(cat $d/device)" = "$device" ]; then bdf=${d##*/}; break; fi
done
check "guest-pci-$want" test -n "$bdf"
drv() { basename "$(readlink /sys/bus/pci/devices/$bdf/driver 2>/dev/null || echo none)"; }
if [ -n "$bdf" ]; then
	g=$(readlink /sys/bus/pci/devices/$bdf/iommu_group)
	echo "LAB: $want at $bdf, iommu_group=${g##*/}, iommu=$(basename "$(readlink /sys/bus/pci/devices/$bdf/iommu)"), driver=$(drv)"
	if [ "$probe" = 1 ]; then
		echo vfio-pci >/sys/bus/pci/devices/$bdf/driver_override
		[ -e /sys/bus/pci/devices/$bdf/driver ] && echo $bdf >/sys/bus/pci/devices/$bdf/driver/unbind
		echo $bdf >/sys/bus/pci/drivers_probe
		cdev=/dev/vfio/devices/$(ls /sys/bus/pci/devices/$bdf/vfio-dev/ 2>/dev/null | head -1)
		edu=; [ "$want" = 1234:11e8 ] && edu=--edu
		/bin/smmuv3-probe --expect-viommu=$viommu $edu "$cdev" >/tmp/probe.out 2>&1; prc=$?
		grep -E '^(FAIL|smmuv3-probe:)|passed' /tmp/probe.out | sed 's/^/LAB-PROBE: /'
		check guest-smmuv3-probe test $prc = 0
		# lab.keepbound (negative test of the no-driver checks): leave it on vfio-pci
		if [ "$keepbound" = 0 ]; then
			echo $bdf >/sys/bus/pci/drivers/vfio-pci/unbind
			echo >/sys/bus/pci/devices/$bdf/driver_override
		fi
	fi
	[ "$byhand" = 1 ] && . /lab/byhand.sh
	check guest-dev-on-no-driver test "$(drv)" = none
	ovr=$(cat /sys/bus/pci/devices/$bdf/driver_override)
	check guest-dev-no-override test "$ovr" = "(null)" -o -z "$ovr"
fi

port_named() { # port_named NAME -> /dev/vportNpM
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat $p/name 2>/dev/null)" = "$1" ] && { echo /dev/${p##*/}; return 0; }
	done
	return 1
}
port=$(port_named org.vsmmu.remote) ctl=$(port_named org.vsmmu.lab)
check guest-remote-port test -c "$port"
check guest-control-port test -c "$ctl"
echo "LAB: remote port $port, control port $ctl"

if [ -c "$port" ] && [ -x /bin/vsmmu-remote ]; then
	# Both ports are opened ONCE here and stay open: closing a virtio port discards what
	# the host has already sent to it, so a port closed between two executors (or two
	# reads) would lose the first request of a client that connected meanwhile.
	exec 3<>"$port" 4<>"$ctl"
	# The control port: a "poweroff" line arms the power-off, acknowledged with
	# "poweroff-armed" (the host then sends BYE). read sees EOF at once while no host
	# is connected, hence the loop.
	( while :; do
		if read -r cmd <&4 2>/dev/null && [ "$cmd" = poweroff ]; then
			: >/tmp/poweroff
			echo poweroff-armed >&4
			break
		fi
		sleep 0.3
	done ) 3<&- &
	VMM=/opt/qemu/bin/qemu-system-aarch64 vmm=
	if [ -x $VMM ]; then
		vmm="--vmm $VMM --vmm-log /tmp"
		# every VMM the executor starts: its output (the nested guest's console) to ours
		( while :; do
			for f in /tmp/vsmmu-vmm-*.log; do
				[ -e "$f" ] && [ ! -e "$f.relayed" ] || continue
				: >"$f.relayed"
				# a read loop, not sed: sed's output is buffered, and a VMM that failed at
				# once (two lines) was never seen
				tail -f "$f" | while IFS= read -r l; do echo "L1-VMM: $l"; done &
			done
			sleep 0.5
		done ) 3<&- 4<&- &
	fi
	echo "LAB-REMOTE ready uptime=$(cut -d' ' -f1 /proc/uptime)${vmm:+ vmm=$VMM}"
	runs=0 bad=0
	while :; do
		# stdin/stdout = the port (fd 3): each executor serves one host connection
		# shellcheck disable=SC2086
		/bin/vsmmu-remote --log /tmp/remote.log $vmm <&3 >&3 3<&- 4<&-; rc=$?
		runs=$((runs + 1))
		[ $rc = 0 ] || { bad=$((bad + 1)); echo "LAB-REMOTE exit rc=$rc (run $runs)"; }
		[ -e /tmp/poweroff ] && break
		sleep 0.2
	done
	echo "LAB-REMOTE done: $runs runs, $bad with a non-zero exit, uptime=$(cut -d' ' -f1 /proc/uptime)"
	check guest-remote-exits-clean test $bad = 0
	[ -s /tmp/remote.log ] && tail -n 20 /tmp/remote.log | sed 's/^/LAB-REMOTE-LOG: /'
else
	check guest-remote-executor test -x /bin/vsmmu-remote
fi
dmesg | grep -i -E 'smmu|iommufd|vfio' | tail -n 10 | sed 's/^/LAB-DMESG-AFTER: /'
echo "LAB-EXIT=$fail uptime=$(cut -d' ' -f1 /proc/uptime)"
# Interactive debugging: boot with "lab.shell" on the kernel command line.
if grep -qw lab.shell /proc/cmdline; then setsid cttyhack sh; fi
sync
poweroff -f
