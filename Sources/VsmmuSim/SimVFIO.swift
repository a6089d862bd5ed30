import VsmmuKernel

// The VFIO cdev (docs/kernel-interface.md §3.1–§3.3), the shared attach/replace core (§3.3, ARM §5.4), and the
// selftest MOCK_DOMAIN / MOCK_DOMAIN_REPLACE commands that stand in for BIND/ATTACH (docs/kernel-interface.md §7.2).

/// Drivers that manage DMA themselves and so do not break a group's viability (docs/kernel-interface.md §8):
/// these and every VFIO driver (variant drivers set driver_managed_dma too).
let dmaManagingDrivers: Set<String> = ["vfio-pci", "pci-stub", "pcieport"]
func managesDMA(_ driver: String) -> Bool { dmaManagingDrivers.contains(driver) || VFIODriver.isVFIO(driver) }

extension SimulatedKernel {
    func deviceWithVfioIndex(_ index: Int) -> SimPCIDevice? {
        indexes.vfioOwner(index).flatMap { state.devices[$0] }
    }

    /// The open cdev behind an fd used for a VFIO ioctl.
    func vfioFile(_ fd: Int32) throws(Refusal) -> VfioFile {
        guard let file = ownFile(fd) else { throw Refusal(.EBADF, "fd \(fd) is not open") }
        // VFIO requests (nr < 0x80) on /dev/iommu go to the VFIO-container emulation:
        // ENOTTY (docs/kernel-interface.md §1.2); other files have no such ioctl either.
        guard case .vfioDevice(let vfio) = file else { throw Refusal(.ENOTTY, "fd \(fd) is not a VFIO device cdev") }
        return vfio
    }

    // MARK: open

    func openVfioDeviceImpl(index: Int) throws(Refusal) -> Int32 {
        // The node /dev/vfio/devices/vfioN exists exactly while a device holds index N
        // (devtmpfs creates and removes it with the cdev): open(2) of a missing node is ENOENT.
        guard hasVfioCdev else { throw Refusal(.ENOENT, "/dev/vfio/devices does not exist (kernel without VFIO_DEVICE_CDEV)") }
        guard let device = deviceWithVfioIndex(index) else { throw Refusal(.ENOENT, "/dev/vfio/devices/vfio\(index) does not exist") }
        let fd = allocateFD()
        setFile(fd, .vfioDevice(VfioFile(address: device.address, context: nil, device: nil)))
        return fd
    }

    // MARK: VFIO_DEVICE_BIND_IOMMUFD (docs/kernel-interface.md §3.3, in the kernel's order)

    func bindImpl(_ fd: Int32, iommufd: Int32) throws(Refusal) -> ObjectID {
        var vfio = try vfioFile(fd)
        if vfio.context != nil { throw Refusal(.EINVAL, "fd \(fd) is already bound") }
        guard let iommufdFile = ownFile(iommufd) else { throw Refusal(.EBADF, "iommufd \(iommufd) is not an open fd") }
        guard case .iommufd(let cid) = iommufdFile, state.contexts[cid] != nil else {
            throw Refusal(.EBADFD, "fd \(iommufd) is not an iommufd")
        }
        guard let pci = state.devices[vfio.address] else { throw Refusal(.ENODEV, "device \(vfio.address) is gone") }
        // docs/kernel-interface.md §3.3/§9.30: one bind per device system-wide.
        for otherFD in indexes.sortedCdevFDs(of: vfio.address) where otherFD != fd {
            if case .vfioDevice(let other)? = state.files[otherFD], other.context != nil {
                throw Refusal(.EINVAL, "\(vfio.address) is already bound through fd \(otherFD)")
            }
        }
        // iommufd side. The IOMMU cache-coherency check (IOMMU_CAP_CACHE_COHERENCY, ARM
        // IDR0.COHACC) is assumed to pass: the host's `coherent` means CANWBS/S2FWB, which
        // only gates the vIOMMU (docs/kernel-interface.md §5.2).
        guard let group = pci.iommuGroup, let iommuName = pci.iommu, hostIOMMU(iommuName) != nil else {
            throw Refusal(.ENODEV, "\(vfio.address) has no IOMMU group")
        }
        // DMA ownership (docs/kernel-interface.md §8): the group must not be owned by another iommufd, and no member
        // may be bound to a driver that uses the kernel DMA API.
        let members = indexes.sortedMembers(ofGroup: group)
        for member in members {
            for otherFD in indexes.sortedCdevFDs(of: member) {
                if case .vfioDevice(let other)? = state.files[otherFD], let otherContext = other.context, otherContext != cid {
                    throw Refusal(.EPERM, "IOMMU group \(group) is owned by another iommufd (through \(other.address))")
                }
            }
        }
        for address in members where address != pci.address {
            if let sibling = state.devices[address], let driver = sibling.driver, !managesDMA(driver) {
                throw Refusal(.EPERM, "IOMMU group \(group) is not viable: \(sibling.address) is bound to \(driver)")
            }
        }
        let id = allocateID(cid)
        setObject(cid, id, .device(DeviceObject(origin: .vfio(pci.address), iommu: iommuName, group: .pci(group), attached: nil)))
        vfio.context = cid
        vfio.device = id
        setFile(fd, .vfioDevice(vfio))
        return id
    }

    // MARK: VFIO_DEVICE_ATTACH_IOMMUFD_PT / DETACH

    func attachImpl(_ fd: Int32, ptID: ObjectID) throws(Refusal) -> ObjectID {
        let vfio = try vfioFile(fd)
        guard let cid = vfio.context, let devID = vfio.device else { throw Refusal(.EINVAL, "fd \(fd) is not bound to an iommufd") }
        return try attachDevice(cid, devID, ptID: ptID, replaceOnly: false)
    }

    func detachImpl(_ fd: Int32) throws(Refusal) {
        let vfio = try vfioFile(fd)
        guard let cid = vfio.context, let devID = vfio.device else { throw Refusal(.EINVAL, "fd \(fd) is not bound to an iommufd") }
        // docs/kernel-interface.md §9.31: detaching an unattached device succeeds.
        detachDevice(cid, devID)
    }

    // MARK: the attach core

    /// Attach (or replace, docs/kernel-interface.md §3.3) a device to an IOAS, a HWPT_PAGING or a HWPT_NESTED.
    /// `replaceOnly` is MOCK_DOMAIN_REPLACE / iommufd_device_replace: the device must be
    /// attached already. Returns the HWPT attached (the automatic one for an IOAS).
    func attachDevice(_ cid: Int, _ devID: ObjectID, ptID: ObjectID, replaceOnly: Bool) throws(Refusal) -> ObjectID {
        guard let pt = object(cid, ptID) else { throw Refusal(.ENOENT, missing(cid, ptID, "pt_id")) }
        switch pt {
        case .hwptPaging, .hwptNested:
            let plan = try planAttach(cid, devID, hwptID: ptID, replaceOnly: replaceOnly)
            commit(cid, plan)
            return ptID
        case .ioas:
            return try attachToIOAS(cid, devID, ioasID: ptID, replaceOnly: replaceOnly)
        default:
            throw Refusal(.EINVAL, "pt_id \(ptID) is a \(pt.typeName), not an IOAS or HWPT")
        }
    }

    struct AttachPlan {
        var hwpt: ObjectID
        var moving: [ObjectID]
        var previous: ObjectID?
        /// ARM: a paging HWPT a CANWBS device upgrades to enforce coherency.
        var upgradeCoherency: ObjectID? = nil
    }

    /// Every check of an attach/replace, in the kernel's order (iommufd_hw_pagetable_attach):
    /// group rule (EINVAL), device reserved regions against the IOAS's mappings
    /// (EADDRINUSE), then the IOMMU driver (ARM docs/kernel-interface.md §5.4: EINVAL other SMMU, ENOENT S1 vSTE
    /// without vDevice). Changes nothing.
    func planAttach(_ cid: Int, _ devID: ObjectID, hwptID: ObjectID, replaceOnly: Bool) throws(Refusal) -> AttachPlan {
        guard let device = deviceObject(cid, devID) else { throw Refusal(.ENOENT, "device \(devID) is gone") }
        let current = device.attached
        if replaceOnly && current == nil { throw Refusal(.EINVAL, "device \(devID) is not attached: nothing to replace") }
        if current == hwptID { return AttachPlan(hwpt: hwptID, moving: [], previous: nil) }   // replace with itself: no-op

        let siblings = objects(cid).compactMap { entry -> (id: ObjectID, device: DeviceObject)? in
            if case .device(let d) = entry.object, d.group == device.group, entry.id != devID { return (entry.id, d) }
            return nil
        }
        var moving = [devID]
        if let current {
            // docs/kernel-interface.md §3.3: a replace moves the whole group.
            moving += siblings.filter { $0.device.attached == current }.map(\.id)
        } else if let other = siblings.first(where: { $0.device.attached != nil && $0.device.attached != hwptID }) {
            throw Refusal(.EINVAL, "group sibling device \(other.id) is attached to HWPT \(other.device.attached ?? 0): a group shares one attachment")
        }

        guard let target = pagingParent(cid, of: hwptID), let ioas = ioasObject(cid, target.hwpt.ioas) else {
            throw Refusal(.EINVAL, "HWPT \(hwptID) has no paging parent")
        }
        for id in moving {
            guard let member = deviceObject(cid, id) else { continue }
            let currentIOAS = member.attached.flatMap { pagingParent(cid, of: $0)?.hwpt.ioas }
            guard currentIOAS != target.hwpt.ioas else { continue }
            for region in deviceReservedRanges(iommu: member.iommu) {
                if let hit = ioas.mappings.first(where: { overlaps(IovaRange(start: $0.iova, last: $0.last), region) }) {
                    throw Refusal(.EADDRINUSE, "the device's reserved region [\(hex(region.start)), \(hex(region.last))] overlaps the mapping at \(hex(hit.iova)) in IOAS \(target.hwpt.ioas)")
                }
            }
        }
        var upgrade: ObjectID?
        for id in moving {
            guard let member = deviceObject(cid, id) else { continue }
            try driverAttachCheck(cid, id, member, hwptID: hwptID)
            if let u = try coherencyCheck(cid, id, member, hwptID: hwptID) { upgrade = u }
        }
        return AttachPlan(hwpt: hwptID, moving: moving, previous: current, upgradeCoherency: upgrade)
    }

    func commit(_ cid: Int, _ plan: AttachPlan) {
        if let id = plan.upgradeCoherency, var paging = pagingObject(cid, id) {
            paging.enforcesCoherency = true
            setObject(cid, id, .hwptPaging(paging))
        }
        for id in plan.moving {
            guard var member = deviceObject(cid, id) else { continue }
            member.attached = plan.hwpt
            setObject(cid, id, .device(member))
        }
        if let previous = plan.previous { releaseAutomaticHWPTIfUnused(cid, previous) }
    }

    /// ARM cache-coherency enforcement (docs/kernel-interface.md §5.2, §9.24): a non-CANWBS master cannot join a
    /// domain that enforces it (directly or under a nested HWPT on it); a CANWBS master
    /// attaching directly to a domain that does not upgrades it, which fails (EINVAL)
    /// while a non-CANWBS master is on it. Returns the HWPT to upgrade.
    private func coherencyCheck(_ cid: Int, _ devID: ObjectID, _ device: DeviceObject, hwptID: ObjectID) throws(Refusal) -> ObjectID? {
        guard let iommu = hostIOMMU(device.iommu), iommu.type == .armSMMUv3,
              let domain = pagingParent(cid, of: hwptID) else { return nil }
        let canwbs = deviceCANWBS(device, iommu)
        if domain.hwpt.enforcesCoherency == true {
            if !canwbs { throw Refusal(.EINVAL, "HWPT \(domain.id) enforces cache coherency (made through a CANWBS device); device \(devID)'s root complex is not CANWBS") }
            return nil
        }
        guard canwbs, pagingObject(cid, hwptID) != nil else { return nil }
        let onDomain = objects(cid).contains { entry in
            guard case .device(let other) = entry.object, entry.id != devID, let at = other.attached,
                  pagingParent(cid, of: at)?.id == domain.id, let i = hostIOMMU(other.iommu) else { return false }
            return !deviceCANWBS(other, i)
        }
        if onDomain { throw Refusal(.EINVAL, "HWPT \(hwptID) holds a non-CANWBS device, so it cannot enforce the cache coherency device \(devID) reports") }
        return hwptID
    }

    /// The IOMMU driver's attach checks.
    private func driverAttachCheck(_ cid: Int, _ devID: ObjectID, _ device: DeviceObject, hwptID: ObjectID) throws(Refusal) {
        switch object(cid, hwptID) {
        case .hwptPaging(let paging)?:
            // ARM docs/kernel-interface.md §5.2: a domain of another SMMU → EINVAL (the same for other drivers).
            if paging.iommu != device.iommu {
                throw Refusal(.EINVAL, "HWPT \(hwptID) belongs to \(paging.iommu), the device to \(device.iommu)")
            }
        case .hwptNested(let nested)?:
            switch nested.parent {
            case .viommu(let viommuID):
                guard let viommu = viommuObject(cid, viommuID) else { throw Refusal(.EINVAL, "the nested HWPT's vIOMMU is gone") }
                if viommu.iommu != device.iommu {
                    throw Refusal(.EINVAL, "nested HWPT \(hwptID) is on vIOMMU \(viommuID) of \(viommu.iommu), the device is behind \(device.iommu)")
                }
                let hasVDevice = objects(cid).contains {
                    if case .vdevice(let v) = $0.object { return v.device == devID && v.viommu == viommuID }
                    return false
                }
                if hostIOMMU(viommu.iommu)?.type == .selftest {
                    // docs/kernel-interface.md §7.3: the mock needs a vDevice whatever the data.
                    if !hasVDevice { throw Refusal(.ENOENT, "device \(devID) has no vDevice on vIOMMU \(viommuID)") }
                } else if nested.config == .stage1 && !hasVDevice {
                    // docs/kernel-interface.md §5.4/§9.9: an S1-translate vSTE needs the vDevice first.
                    throw Refusal(.ENOENT, "the vSTE selects S1 translation and device \(devID) has no vDevice on vIOMMU \(viommuID)")
                }
            case .paging(let parentID):
                let parentIOMMU = pagingObject(cid, parentID)?.iommu
                if nested.iommu != device.iommu || parentIOMMU != device.iommu {
                    throw Refusal(.EINVAL, "nested HWPT \(hwptID) belongs to another IOMMU than the device's \(device.iommu)")
                }
            }
        default:
            throw Refusal(.EINVAL, "\(hwptID) is not a HWPT")
        }
    }

    /// pt_id = IOAS (docs/kernel-interface.md §3.3): reuse an automatic HWPT of the IOAS that accepts the device
    /// (EINVAL from one means "try the next"), else create one with flags 0; manual HWPTs
    /// are never picked (docs/kernel-interface.md §9.5).
    private func attachToIOAS(_ cid: Int, _ devID: ObjectID, ioasID: ObjectID, replaceOnly: Bool) throws(Refusal) -> ObjectID {
        guard let device = deviceObject(cid, devID) else { throw Refusal(.ENOENT, "device \(devID) is gone") }
        for entry in objects(cid) {
            guard case .hwptPaging(let hwpt) = entry.object, hwpt.automatic, hwpt.ioas == ioasID else { continue }
            do {
                let plan = try planAttach(cid, devID, hwptID: entry.id, replaceOnly: replaceOnly)
                commit(cid, plan)
                return entry.id
            } catch let refusal where refusal.errno == .EINVAL {
                continue
            } catch {
                throw error
            }
        }
        let iommu = try iommu(of: device)
        let aperture = domainAperture(iommu, flags: 0)
        let hwpt = PagingHWPT(ioas: ioasID, iommu: iommu.name, flags: 0, automatic: true, aperture: aperture)
        let id = allocateID(cid)
        if replaceOnly {
            // iommufd_hwpt_paging_alloc without immediate attach: join the IOAS, then replace.
            try checkDomainJoin(cid, ioas: ioasID, aperture: aperture, pageSize: domainPageSize(iommu))
            setObject(cid, id, .hwptPaging(hwpt))
            do {
                let plan = try planAttach(cid, devID, hwptID: id, replaceOnly: true)
                try pinAll(cid, ioas: ioasID)
                commit(cid, plan)
            } catch {
                removeObject(cid, id)
                throw error
            }
        } else {
            // Immediate attach: the device attach checks run before the domain joins the IOAS.
            setObject(cid, id, .hwptPaging(hwpt))
            let plan: AttachPlan
            do { plan = try planAttach(cid, devID, hwptID: id, replaceOnly: false) } catch { removeObject(cid, id); throw error }
            removeObject(cid, id)
            try checkDomainJoin(cid, ioas: ioasID, aperture: aperture, pageSize: domainPageSize(iommu))
            setObject(cid, id, .hwptPaging(hwpt))
            do { try pinAll(cid, ioas: ioasID) } catch { removeObject(cid, id); throw error }
            commit(cid, plan)
        }
        return id
    }

    // MARK: selftest mock devices (docs/kernel-interface.md §7.2)

    func selftestIOMMU() throws(Refusal) -> HostIOMMU {
        // Without CONFIG_IOMMUFD_TEST the request is beyond the table: VFIO-container
        // emulation, ENOTTY (docs/kernel-interface.md §1.2).
        guard let iommu = state.iommus.first(where: { $0.type == .selftest }) else {
            throw Refusal(.ENOTTY, "\(KernelCall.testCmd) needs a kernel with CONFIG_IOMMUFD_TEST (no selftest IOMMU in the host)")
        }
        return iommu
    }

    func mockDomainImpl(_ fd: Int32, ptID: ObjectID) throws(Refusal) -> MockDevice {
        let cid = try context(ofIommufd: fd)
        let iommu = try selftestIOMMU()
        let serial = state.nextMockSerial
        // The kernel allocates the SELFTEST object, then binds (DEVICE), then attaches.
        let stdev = allocateID(cid)
        setObject(cid, stdev, .selftest(SelftestObject(device: 0, serial: serial)))
        let idev = allocateID(cid)
        setObject(cid, idev, .device(DeviceObject(origin: .mock(serial: serial, stdev: stdev), iommu: iommu.name,
                                                  group: .mock(serial), attached: nil)))
        setObject(cid, stdev, .selftest(SelftestObject(device: idev, serial: serial)))
        do throws(Refusal) {
            // The SELFTEST object is finalized only after the attach (iommufd_test_mock_domain):
            // until then iommufd_get_object does not find it, so naming it as pt_id is ENOENT.
            if ptID == stdev { throw Refusal(.ENOENT, "pt_id \(ptID) is the SELFTEST object being created (not finalized yet)") }
            let hwpt = try attachDevice(cid, idev, ptID: ptID, replaceOnly: false)
            state.nextMockSerial += 1
            return MockDevice(stdevID: stdev, hwptID: hwpt, idevID: idev)
        } catch {
            removeObject(cid, idev)
            removeObject(cid, stdev)
            throw error
        }
    }

    func mockDomainReplaceImpl(_ fd: Int32, stdevID: ObjectID, ptID: ObjectID) throws(Refusal) -> ObjectID {
        let cid = try context(ofIommufd: fd)
        _ = try selftestIOMMU()
        guard case .selftest(let selftest)? = object(cid, stdevID) else {
            throw Refusal(.ENOENT, missing(cid, stdevID, "id") + " (a SELFTEST object is needed)")
        }
        return try attachDevice(cid, selftest.device, ptID: ptID, replaceOnly: true)
    }
}
