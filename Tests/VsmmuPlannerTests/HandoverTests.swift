import Foundation
import VsmmuTestSupport
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
import VsmmuProvisioning
@testable import VsmmuSim

// The handover on the simulated kernel (docs/contract.md §6): a stock VMM binds the VFIO
// devices itself, so it cannot take a guest whose graph vsmmu holds; after the handover it can.

/// QEMU started the old way on a prepared guest: its own cdev fds (host=) and iommufd.
private func realizeTheOldWay(_ h: Harness, _ layout: VMMGuestLayout) -> KernelCallError? {
    let qemu = h.sim.spawnProcess(pid: 4242, command: "qemu-system-aarch64")
    defer { h.sim.exitProcess(qemu) }
    return h.sim.run(as: qemu) { () -> KernelCallError? in
        do throws(KernelCallError) {
            let fd = try h.sim.openIommufd()
            var cdevs: [String: DeviceHandle] = [:]
            for d in layout.devices { cdevs[d.name] = try h.sim.openVfioDevice(index: try h.sim.pciDevice(d.address)!.vfioDevIndex!) }
            _ = try QEMURealize.run(layout, files: VMMFiles(iommufd: fd, devices: cdevs, memory: [:]), port: h.sim)
            return nil
        } catch { return error }
    }
}

@Test(arguments: ["two-vsmmus-four-gpus", "cmdqv", "devices-without-vsmmu"])
func aStockVMMCannotTakeAPreparedGuestButCanAfterTheHandover(example: String) throws {
    let h = try Harness(host: exampleHost(example))
    let t = try h.example(example)
    try h.apply(t)
    let guest = t.guests[0].name
    let layout = try VMMGuestLayout(holding: h.store.holdings.guests[guest]!, port: h.sim)

    // The regression this lifecycle exists for: the kernel refuses QEMU's bind.
    let refused = realizeTheOldWay(h, layout)
    #expect(refused?.call == "VFIO_DEVICE_BIND_IOMMUFD")
    #expect(refused?.errno == .EINVAL)

    let session = Session(port: h.sim, sim: h.sim, stateDir: h.dir)
    let lifecycle = GuestLifecycle(session: session)
    let handover = try lifecycle.handOver(guest, store: h.store, note: { Issue.record("unexpected note: \($0)") })
    // Every fresh cdev is unbound, the iommufd is empty with per-process accounting, and the
    // guest's held objects are gone while its devices stay on vfio-pci.
    for (name, cdev) in handover.files.devices {
        guard case .vfioDevice(let v)? = h.sim.state.files[cdev.fd] else { Issue.record("\(name): fd \(cdev.fd) is no cdev"); continue }
        #expect(v.context == nil, "\(name)'s fresh cdev is bound")
    }
    guard case .iommufd(let cid)? = h.sim.state.files[handover.files.iommufd.fd] else { Issue.record("no iommufd"); return }
    #expect(h.sim.state.contexts[cid]?.objects.isEmpty == true)
    #expect(try h.sim.iommuOption(handover.files.iommufd, option: .rlimitMode, objectID: 0, set: nil) == 1)
    #expect(h.store.holdings.guests[guest] == nil)
    for d in layout.devices { #expect(try h.sim.pciDevice(d.address)?.driver == "vfio-pci") }
    #expect(handover.files.memory.count == t.guests[0].memory.filter { $0.backing != .anonymous }.count)

    // The VMM's realize now succeeds, in its own process; the holder keeps none of the fds.
    let vmm = try lifecycle.simulateVMM(handover, pid: 4343, command: ["qemu-system-aarch64"])
    // Its pins are charged to its own RLIMIT_MEMLOCK (per-process mode), which launch raised
    // to exactly the guest RAM it pins: not a byte more is needed.
    #expect(h.sim.lockedBytes(of: vmm).process == handover.pinnedBytes)
    let held = Set(try h.sim.openFiles().map(\.fd))
    #expect(held.isDisjoint(with: handover.allFDs), "the holder still has \(held.intersection(handover.allFDs))")
    for d in layout.devices { #expect(try h.sim.deviceHolders(d.address).map(\.pid) == [4343]) }

    // Its exit frees the devices: the old way works again (nothing holds them).
    h.sim.exitProcess(vmm)
    #expect(realizeTheOldWay(h, layout) == nil)
}

@Test func unbindNeverReachesADeviceAVMMHolds() throws {
    let (h, t, lifecycle, handover) = try handedOverOneGuest()
    _ = try lifecycle.simulateVMM(handover, pid: 4444, command: ["qemu-system-aarch64"])
    // The state forgets the running record (as a lost holdings file would): destroy then
    // plans the give-back, and its unbind step must refuse, naming the VMM, before the write.
    let plan = try h.plan(t, destroying: true)
    #expect(plan.operations.contains { if case .unbindDriver = $0.action { return true } else { return false } })
    do {
        try Pipeline.apply(plan, port: h.sim, store: h.store)
        Issue.record("the unbind went through")
    } catch let e as ApplyError {
        #expect(e.message.contains("held open by pid 4444 (qemu-system-aarch64)"), "\(e.message)")
    }
    #expect(!h.sim.trace.contains { $0.op == "SYSFS_UNBIND" })
}

@Test func aDeviceTakenByAnotherProcessAfterTheReleaseIsNamed() throws {
    let (h, _, lifecycle, handover) = try handedOverOneGuest()
    // Another process opens and binds the device in the window before the VMM's bind.
    let intruder = h.sim.spawnProcess(pid: 6666, command: "intruder")
    let gpu = handover.layout.devices[0]
    try h.sim.run(as: intruder) {
        let fd = try h.sim.openIommufd()
        let cdev = try h.sim.openVfioDevice(index: try h.sim.pciDevice(gpu.address)!.vfioDevIndex!)
        _ = try h.sim.bindIommufd(cdev, iommufd: fd)
    }
    // The VMM's realize fails at its bind, as QEMU's would, and nothing is recorded running.
    #expect(throws: LaunchError.self) { _ = try lifecycle.simulateVMM(handover, pid: 4545, command: ["qemu-system-aarch64"]) }
    // Had the VMM been recorded running, the check names the intruder.
    let r = RunningGuest(pid: 4545, startTime: nil, command: ["qemu"], vmm: .qemu, since: 0, devices: [gpu.name: gpu.address])
    let problems = lifecycle.runningProblems(r)
    #expect(problems.contains { $0.contains("held by pid 6666 (intruder)") }, "\(problems)")
}

/// one-guest-one-vsmmu applied on a simulated Grace host and guest vm1 handed over (fresh fds
/// open in the holder, its held graph released).
private func handedOverOneGuest() throws -> (Harness, Topology, GuestLifecycle, Handover) {
    let h = try Harness(host: exampleHost("one-guest-one-vsmmu"))
    let t = try h.example("one-guest-one-vsmmu")
    try h.apply(t)
    let lifecycle = GuestLifecycle(session: Session(port: h.sim, sim: h.sim, stateDir: h.dir))
    return (h, t, lifecycle, try lifecycle.handOver("vm1", store: h.store, note: { _ in }))
}
