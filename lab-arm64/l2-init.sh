#!/bin/busybox sh
# /init of the nested (L2) guest of boot kvm, started by QEMU 11 under KVM in the L1 guest
# with `arm-smmuv3,accel=on` and the outer edu on vfio-pci (from ../shared/lab-arm64-kvm).
# Prints, on its serial console (QEMU's stdout in L1, relayed to the boot log):
#   L2-HELLO / L2-PCI <bdf> <vendor:device> iommu=<iommu> / L2-IORT-BEGIN..END (base64)
#   L2-CHECK PASS|FAIL <name>: edu-behind-smmuv3, smmuv3-driver, edu-mmio, and with l2.dma
#   s1-fault-forwarded (a DMA from an unmapped IOVA faults in L2's stage 1 and the event
#   reaches L2's vSMMU event queue through L1's vEVENTQ) and dma-bypass-roundtrip (group
#   identity -> bypass vSTE; RAM -> edu -> RAM at L2 physical addresses, stage 2 only)
#   L2-DONE, then powers off (QEMU exits: -no-reboot).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
check() { n=$1; shift; if "$@"; then echo "L2-CHECK PASS $n"; else echo "L2-CHECK FAIL $n"; fi; }
echo "L2-HELLO uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) el=$(dmesg | grep -o 'CPU: All CPU(s) started at EL[0-9]' | head -1)"
echo "L2: iommus: $(ls /sys/class/iommu 2>/dev/null | tr '\n' ' ')"
edu=
for d in /sys/bus/pci/devices/*; do
	[ -e "$d" ] || continue
	i=$(readlink $d/iommu 2>/dev/null)
	echo "L2-PCI ${d##*/} $(cat $d/vendor | cut -c3-):$(cat $d/device | cut -c3-) iommu=${i##*/}"
	[ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ] && edu=$d
done
i=$(readlink $edu/iommu 2>/dev/null)
check edu-behind-smmuv3 sh -c "echo '${i##*/}' | grep -q '^smmu3\.'"
check smmuv3-driver sh -c "dmesg | grep -q 'arm-smmu-v3.*features 0x'"
if [ -r /sys/firmware/acpi/tables/IORT ]; then
	echo L2-IORT-BEGIN; base64 /sys/firmware/acpi/tables/IORT; echo L2-IORT-END
fi
if [ -n "$edu" ]; then
	g=$(readlink $edu/iommu_group); g=${g##*/}
	[ -e $edu/driver ] && echo ${edu##*/} >$edu/driver/unbind
	echo 1 >$edu/enable
	printf '\006\000' | dd of=$edu/config bs=1 seek=4 count=2 conv=notrunc 2>/dev/null # MEM | BUS MASTER
	b=$(($(head -1 $edu/resource | cut -d' ' -f1)))
	devmem $((b + 4)) 32 0x12345678
	echo "L2-EDU ${edu##*/} group=$g type=$(cat /sys/kernel/iommu_groups/$g/type) ident=$(devmem $b 32)"
	check edu-mmio test "$(devmem $((b + 4)) 32)" = 0xEDCBA987
	if grep -qw l2.dma /proc/cmdline; then
		dma() { # dma SRC DST COUNT CMD: edu's DMA engine, waits until it is done
			devmem $((b + 0x80)) 64 $1; devmem $((b + 0x88)) 64 $2; devmem $((b + 0x90)) 64 $3; devmem $((b + 0x98)) 64 $4
			n=0; while [ $(($(devmem $((b + 0x98)) 64) & 1)) = 1 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
		}
		# translate vSTE, empty stage 1 (default DMA domain, no driver): IOVA 0x1000 faults
		dma 0x1000 0x40000 64 1
		sleep 1
		dmesg | grep -A2 'event 0x' | sed 's/^/L2-DMA-EVT: /'
		check s1-fault-forwarded sh -c "dmesg | grep -q 'event 0x10'"
		# the event's first word carries the StreamID in bits 63:32: the vSID L2 sees
		echo "L2-EVENT-SID 0x$(dmesg | grep -A1 'event 0x10' | sed -n 's/.*[[:space:]]0x\([0-9a-f]\{8\}\)[0-9a-f]\{8\}$/\1/p' | head -1)"
		echo identity >/sys/kernel/iommu_groups/$g/type
		echo "L2-DMA group type now $(cat /sys/kernel/iommu_groups/$g/type)"
		bf=$((0x48000000))
		for i in 0 4 8 12; do devmem $((bf + i)) 32 $((0xcafe0000 + i)); devmem $((bf + 0x1000 + i)) 32 0; done
		dma $bf 0x40000 16 1
		dma 0x40000 $((bf + 0x1000)) 16 3
		got=$(for i in 0 4 8 12; do devmem $((bf + 0x1000 + i)) 32; done | tr '\n' ' ')
		echo "L2-DMA read back: $got"
		check dma-bypass-roundtrip test "$got" = "0xCAFE0000 0xCAFE0004 0xCAFE0008 0xCAFE000C "
	fi
fi
dmesg | grep -iE 'smmu|iort' | sed 's/^/L2-DMESG: /'
echo "L2-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
