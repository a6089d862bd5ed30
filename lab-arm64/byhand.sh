# Sourced by init.sh in boot kvm with lab.byhand (uses $bdf, check, drv): the recipe's way,
# with no vsmmu. edu goes to vfio-pci; Debian's arm64 QEMU 11 runs under KVM with fds this
# shell opened (/dev/iommu, the cdev), an accelerated SMMUv3 on a pxb-pcie (bus_nr 16), edu
# behind a root port on it, and boots the nested guest (UEFI + ACPI, /l2) to its L2-DONE.
# Checks "launch-accel-byhand-*": QEMU allocates its vIOMMU on this kernel's arm-smmu-v3,
# the nested guest sees edu at 0000:11:00.0 behind an SMMUv3, and its own L2-CHECK lines
# (MMIO, stage-1 fault forwarded, bypass DMA round trip). edu ends on no driver again.
Q=/opt/qemu/bin/qemu-system-aarch64
up() { cut -d' ' -f1 /proc/uptime; }
check launch-accel-byhand-dev-kvm test -c /dev/kvm
echo "LAB: $($Q --version | head -1)"
echo vfio-pci >/sys/bus/pci/devices/$bdf/driver_override
[ -e /sys/bus/pci/devices/$bdf/driver ] && echo $bdf >/sys/bus/pci/devices/$bdf/driver/unbind
echo $bdf >/sys/bus/pci/drivers_probe
cdev=/dev/vfio/devices/$(ls /sys/bus/pci/devices/$bdf/vfio-dev/ 2>/dev/null | head -1)
t=$(up)
echo "LAB-BYHAND start uptime=$t edu=$bdf on $(drv) cdev=$cdev"
(exec 5<>/dev/iommu 6<>"$cdev"; exec timeout -s KILL 900 $Q -accel kvm -machine virt,gic-version=3,memory-backend=mem.ram0 \
	-cpu host -m 256M -object memory-backend-memfd,id=mem.ram0,size=256M,share=on \
	-nodefaults -display none -serial stdio -no-reboot -bios /l2/QEMU_EFI.fd \
	-object iommufd,id=iommufd0,fd=5 -device pxb-pcie,id=pcie.1,bus_nr=16,bus=pcie.0 \
	-device arm-smmuv3,primary-bus=pcie.1,accel=on,id=smmuv3.0 \
	-device pcie-root-port,id=rp0,bus=pcie.1,chassis=1 -device vfio-pci,id=edu0,bus=rp0,iommufd=iommufd0,fd=6 \
	-trace 'iommufd_backend_alloc_v*' -trace 'iommufd_viommu_*' -trace 'smmuv3_accel_*' -trace smmuv3_propagate_event \
	-kernel /l2/Image -initrd /l2/initrd.cpio -append "console=ttyAMA0 panic=-1 acpi=force l2.dma") \
	</dev/null >/tmp/byhand.out 2>&1
rc=$?
tr -d '\r' </tmp/byhand.out | sed 's/^/L1-BYHAND: /'
echo "LAB-BYHAND end rc=$rc $(awk -v a="$t" -v b="$(up)" 'BEGIN{printf "%.1f", b-a}')s"
B=/tmp/byhand.out
check launch-accel-byhand-qemu-exit-0 test $rc = 0
check launch-accel-byhand-viommu-alloc grep -q 'iommufd_backend_alloc_viommu.*viommu_id=[0-9]* (0)' $B
check launch-accel-byhand-vdev-vsid-0x1100 grep -q 'iommufd_backend_alloc_vdev.*virt_id=0x1100' $B
check launch-accel-byhand-veventq-alloc grep -q 'iommufd_viommu_alloc_eventq.*(0)' $B
check launch-accel-byhand-fault-propagated grep -q 'smmuv3_propagate_event.*sid=0x1100' $B
check launch-accel-byhand-l2-done grep -q '^L2-DONE' $B
check launch-accel-byhand-l2-edu-at-11:00.0 grep -q '^L2-PCI 0000:11:00.0 1234:11e8 iommu=smmu3\.' $B
check launch-accel-byhand-l2-event-vsid grep -q '^L2-EVENT-SID 0x00001100' $B
tr -d '\r' <$B | sed -n 's/^L2-CHECK \(PASS\|FAIL\) /\1 /p' | while read -r r n; do echo "LAB-CHECK $r launch-accel-byhand-l2-$n"; done
[ -n "$(tr -d '\r' <$B | grep '^L2-CHECK')" ] || check launch-accel-byhand-l2-checks false
echo $bdf >/sys/bus/pci/drivers/vfio-pci/unbind
echo >/sys/bus/pci/devices/$bdf/driver_override
