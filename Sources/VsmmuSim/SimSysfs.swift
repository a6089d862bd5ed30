import VsmmuKernel

// sysfs as the provisioner sees it (docs/kernel-interface.md §8): reads, the driver_override / unbind /
// drivers_probe writes, cdev ownership, and host-description edits (drift).

extension SimulatedKernel {
    func sysfsView(_ device: SimPCIDevice) -> SysfsPCIDevice {
        SysfsPCIDevice(address: device.address, vendor: device.vendor, device: device.device, classCode: device.classCode,
                       driver: device.driver, driverOverride: device.driverOverride, iommuGroup: device.iommuGroup,
                       iommu: device.iommu, numaNode: device.numaNode, vfioDevIndex: device.vfioIndex)
    }

    /// /sys/bus/pci/drivers/<name> exists: vfio-pci when the kernel has VFIO cdevs (the
    /// module is assumed loaded), every driver a device is or natively was bound to (a
    /// module stays loaded after unbind), and every device's VFIO variant driver (loaded
    /// from modules.alias, as libvirt's modprobe does).
    var loadedDrivers: Set<String> {
        var drivers = Set(indexes.driverRefs.keys)
        if state.kernel.vfioCdev { drivers.insert("vfio-pci") }
        return drivers
    }

    /// `loadedDrivers.contains(name)` without building the set.
    func isDriverLoaded(_ name: String) -> Bool {
        (state.kernel.vfioCdev && name == "vfio-pci") || indexes.driverRefs[name] != nil
    }

    /// vfioN is the lowest free index (docs/kernel-interface.md §3.1).
    func lowestFreeVfioIndex() -> Int {
        indexes.lowestFreeVfioIndex()
    }

    /// Some member of the group is bound to an iommufd through its cdev (DMA owned by user space).
    func groupOwnedByIommufd(_ group: Int?) -> Bool {
        guard let group else { return false }
        for member in indexes.groupMembers[group] ?? [] {
            for fd in indexes.cdevFDs[member] ?? [] {
                if case .vfioDevice(let vfio)? = state.files[fd], vfio.context != nil { return true }
            }
        }
        return false
    }

    func iommuGroupMembersImpl(_ group: Int) throws(Refusal) -> [PCIAddress] {
        let members = indexes.sortedMembers(ofGroup: group)
        if members.isEmpty { throw Refusal(.ENOENT, "/sys/kernel/iommu_groups/\(group) does not exist") }
        return members
    }

    /// reserved_regions of a group: the regions of its members' IOMMUs, every type
    /// (direct-relaxable included), sorted, duplicates merged.
    func reservedRegionsImpl(group: Int) throws(Refusal) -> [(start: UInt64, last: UInt64, type: String)] {
        let members = try iommuGroupMembersImpl(group)
        var seen = Set<ReservedRegion>()
        var regions: [ReservedRegion] = []
        for address in members {
            guard let name = state.devices[address]?.iommu, let iommu = hostIOMMU(name) else { continue }
            for region in iommu.reservedRegions where region.size > 0 && seen.insert(region).inserted { regions.append(region) }
        }
        return regions.sorted { ($0.start, $0.last) < ($1.start, $1.last) }.map { ($0.start, $0.last, $0.type) }
    }

    // MARK: writes (docs/kernel-interface.md §8)

    func writeDriverOverrideImpl(_ address: PCIAddress, _ driver: String?) throws(Refusal) {
        guard var device = state.devices[address] else { throw Refusal(.ENOENT, "/sys/bus/pci/devices/\(address) does not exist") }
        var value = driver ?? ""
        if value.utf8.count >= Int(simPageSize) - 1 { throw Refusal(.EINVAL, "driver_override value too long") }
        // driver_set_override: the text up to the first newline; empty clears.
        if let newline = value.firstIndex(of: "\n") { value = String(value[..<newline]) }
        device.driverOverride = value.isEmpty ? nil : value
        setDevice(address, device)
    }

    func unbindDriverImpl(_ address: PCIAddress, driver: String) throws(Refusal) {
        guard isDriverLoaded(driver) else { throw Refusal(.ENOENT, "/sys/bus/pci/drivers/\(driver) does not exist") }
        guard var device = state.devices[address], device.driver == driver else {
            throw Refusal(.ENODEV, "\(address) is not bound to \(driver)")
        }
        if VFIODriver.isVFIO(driver) {
            // docs/kernel-interface.md §3.3/§9.32: vfio-pci's remove waits for every fd of the device to close,
            // uninterruptibly after a signal: the writer hangs. The simulation cannot hang;
            // it refuses with an errno the real write never returns, so a test that reaches
            // this line has found a caller that did not check `deviceHolders` first.
            if let fd = indexes.cdevFDs[address]?.min() {
                let holder = deviceHoldersImpl(address).first.map { " by \($0)" } ?? ""
                throw Refusal(.EDEADLK, "the real kernel would hang this write (state D) until fd \(fd) of the device, held\(holder), is closed: a caller must check who holds the device before writing unbind")
            }
            device.vfioIndex = nil
            device.owner = .root
        }
        device.driver = nil
        setDevice(address, device)
    }

    /// drivers_probe (docs/kernel-interface.md §8): attach a driver if the device has none — the override if set,
    /// else the native driver. Probe failures are swallowed (success with nothing bound)
    /// except the DMA-ownership refusal, which the driver core returns (EBUSY).
    func driversProbeImpl(_ address: PCIAddress) throws(Refusal) {
        guard var device = state.devices[address] else { throw Refusal(.ENODEV, "no PCI device \(address)") }
        if device.driver != nil { return }
        guard let driver = device.driverOverride ?? device.nativeDriver, isDriverLoaded(driver) else { return }
        if VFIODriver.isVFIO(driver) {
            // vfio-pci refuses non type-0 headers (bridges): probe error, nothing bound.
            if device.isBridge { return }
            // A variant driver's probe accepts only the devices it was written for (its
            // ID table: the device's vfioDriver); another probe fails, nothing bound.
            if driver != genericVFIODriver && driver != device.vfioDriver { return }
            device.driver = driver
            device.vfioIndex = lowestFreeVfioIndex()
            device.owner = .root
        } else {
            // With driver_override any driver is offered the device; the simulation lets
            // only pci-stub and the device's own native driver succeed in probing it.
            guard driver == "pci-stub" || driver == device.nativeDriver else { return }
            if !managesDMA(driver) && groupOwnedByIommufd(device.iommuGroup) {
                throw Refusal(.EBUSY, "IOMMU group \(device.iommuGroup ?? -1) is owned by iommufd: \(driver) cannot take a member for kernel DMA")
            }
            device.driver = driver
        }
        setDevice(address, device)
    }

    func chownImpl(index: Int, uid: UInt32, gid: UInt32) throws(Refusal) {
        guard hasVfioCdev, let device = deviceWithVfioIndex(index) else {
            throw Refusal(.ENOENT, "/dev/vfio/devices/vfio\(index) does not exist")
        }
        updateDevice(device.address) { $0.owner = VfioOwner(uid: uid, gid: gid) }
    }

    // MARK: host description → sysfs

    /// A host-description device enters sysfs (devices behind the selftest IOMMU do not).
    func addHostDevice(_ host: HostPCIDevice) {
        if let name = host.iommu, hostIOMMU(name)?.type == .selftest {
            state.ignoredHostDevices.removeAll { $0.address == host.address }
            state.ignoredHostDevices.append(host)
            return
        }
        var device = SimPCIDevice(address: host.address, vendor: host.vendor, device: host.device, classCode: host.classCode,
                                  driver: host.driver, driverOverride: nil, iommuGroup: host.iommuGroup, iommu: host.iommu,
                                  numaNode: host.numaNode, vfioIndex: nil,
                                  nativeDriver: host.driver.map(VFIODriver.isVFIO) == true ? nil : host.driver, owner: .root)
        device.takeFacts(of: host)
        if host.driver.map(VFIODriver.isVFIO) == true { device.vfioIndex = lowestFreeVfioIndex() }
        setDevice(host.address, device)
    }

    /// Close every open cdev of a device, with close semantics.
    func forceCloseCdevs(_ address: PCIAddress) {
        for fd in indexes.sortedCdevFDs(of: address) { _ = closeFD(fd) }
    }

    /// Apply the user's edits of host.yaml (`edited` against `base`, the description last
    /// written) over the current state: changed facts win, drivers included (docs/contract.md §6 drift).
    func applyHostEdits(base: HostDescription, edited: HostDescription) {
        if edited.name != base.name { state.hostName = edited.name }
        if edited.kernel != base.kernel { state.kernel = edited.kernel }
        if edited.iommus != base.iommus { setIOMMUs(edited.iommus) }
        var baseDevices: [PCIAddress: HostPCIDevice] = [:]
        for device in base.pciDevices where baseDevices[device.address] == nil { baseDevices[device.address] = device }
        var editedDevices: [PCIAddress: HostPCIDevice] = [:]
        for device in edited.pciDevices where editedDevices[device.address] == nil { editedDevices[device.address] = device }

        for address in baseDevices.keys.sorted() where editedDevices[address] == nil {
            forceCloseCdevs(address)
            setDevice(address, nil)
            state.ignoredHostDevices.removeAll { $0.address == address }
        }
        for address in editedDevices.keys.sorted() {
            guard let new = editedDevices[address] else { continue }
            guard let old = baseDevices[address] else {
                if state.devices[address] == nil { addHostDevice(new) }
                continue
            }
            if old != new { applyDeviceEdit(old: old, new: new) }
        }
        // A device whose IOMMU became the selftest one leaves sysfs.
        for device in state.devices.values.sorted(by: { $0.address < $1.address }) {
            if let name = device.iommu, hostIOMMU(name)?.type == .selftest {
                forceCloseCdevs(device.address)
                setDevice(device.address, nil)
                state.ignoredHostDevices.append(device.hostDevice)
            }
        }
    }

    private func applyDeviceEdit(old: HostPCIDevice, new: HostPCIDevice) {
        guard var device = state.devices[new.address] else {
            if let index = state.ignoredHostDevices.firstIndex(where: { $0.address == new.address }) {
                state.ignoredHostDevices.remove(at: index)
                addHostDevice(new)
            }
            return
        }
        if old.vendor != new.vendor { device.vendor = new.vendor }
        if old.device != new.device { device.device = new.device }
        if old.classCode != new.classCode { device.classCode = new.classCode }
        if old.iommuGroup != new.iommuGroup { device.iommuGroup = new.iommuGroup }
        if old.iommu != new.iommu { device.iommu = new.iommu }
        if old.numaNode != new.numaNode { device.numaNode = new.numaNode }
        device.takeFacts(of: new)
        setDevice(new.address, device)
        if old.driver != new.driver { setDriverByDrift(new.address, new.driver) }
    }

    /// Someone outside the tool rebound the device: moving away from vfio-pci force-closes
    /// its cdevs and drops its vfio index; moving to vfio-pci allocates one.
    private func setDriverByDrift(_ address: PCIAddress, _ driver: String?) {
        guard let current = state.devices[address], current.driver != driver else { return }
        if current.driver.map(VFIODriver.isVFIO) == true { forceCloseCdevs(address) }
        guard var device = state.devices[address] else { return }
        if device.driver.map(VFIODriver.isVFIO) == true {
            device.vfioIndex = nil
            device.owner = .root
        }
        device.driver = driver
        setDevice(address, device)
        if driver.map(VFIODriver.isVFIO) == true {
            // Chosen before the write (choosing it inside `state.devices[address]?.vfioIndex = …`
            // read the devices during their modification: a Swift exclusivity trap).
            let index = lowestFreeVfioIndex()
            updateDevice(address) {
                $0.vfioIndex = index
                $0.owner = .root
            }
        } else if let driver {
            updateDevice(address) { $0.nativeDriver = driver }
        }
    }
}
