import VsmmuKernel

/// One bridge on a peer pair's path and its ACS Control.
public struct BridgeACS: Hashable, Sendable, Codable {
    public var address: String
    /// nil: the bridge has no ACS capability, or (with `unknown`) it could not be read.
    public var acsControl: UInt16?
    public var unknown: Bool
    /// The set bits that send peer traffic to the root complex.
    public var redirects: [String]
}

/// Where peer-to-peer traffic between two devices goes on the host.
public enum PeerRoute: String, Hashable, Sendable, Codable {
    /// Across the switch (or bus) they share: no ACS redirect on the way.
    case direct
    /// ACS on a bridge of the path sends it up to the root complex.
    case redirected
    /// They share no switch: it crosses the root complex whatever ACS says.
    case rootComplex = "root-complex"
    /// The path or a bridge's ACS is not known.
    case unknown
}

/// A `peer:` pair as the plan reports it (docs/contract.md §2 "Placement").
public struct PeerReport: Hashable, Sendable, Codable {
    public var device: String
    public var peer: String
    /// The vSMMU (and so the pxb) both sit behind; nil when they have none.
    public var vsmmu: String?
    public var route: PeerRoute
    public var bridges: [BridgeACS]
    public var text: String
    /// The kernel parameter that would clear the redirects; it takes effect at reboot,
    /// and vsmmu never sets it.
    public var kernelParameter: String?
}

/// Reads a peer pair's path from the host description: the bridges (devices with a
/// `secondaryBus`) from each device up to the one they share, and their ACS Control.
enum PeerPath {
    struct Found {
        var route: PeerRoute
        var bridges: [BridgeACS]
        var text: String
        var kernelParameter: String?
    }

    /// Kernel flags for `pci=config_acs=` (docs/kernel-interface.md §11): the rightmost character is
    /// bit 0; `0` clears Upstream Forwarding (4), P2P Completion Redirect (3) and P2P Request
    /// Redirect (2), `x` leaves Translation Blocking (1) and Source Validation (0) as they are.
    static let clearRedirects = "000xx"

    static func analyze(_ a: HostPCIDevice, _ b: HostPCIDevice, host: HostDescription) -> Found {
        var below: [String: HostPCIDevice] = [:]   // "domain:bus" -> the bridge whose secondary bus it is
        func key(_ domain: UInt16, _ bus: Int) -> String { "\(domain):\(bus)" }
        for d in host.pciDevices { if let s = d.secondaryBus { below[key(d.address.domain, s)] = d } }
        guard !below.isEmpty else {
            return Found(route: .unknown, bridges: [], text: "the host description lists no PCI bridges (secondaryBus), so the path between them is not known; `vsmmu host` lists them")
        }
        func chain(_ d: HostPCIDevice) -> [HostPCIDevice] {
            var out: [HostPCIDevice] = []
            var bus = Int(d.address.bus)
            while let br = below[key(d.address.domain, bus)], !out.contains(where: { $0.address == br.address }), br.address != d.address {
                out.append(br)
                bus = Int(br.address.bus)
            }
            return out
        }
        let ca = chain(a), cb = chain(b)
        guard let common = ca.first(where: { x in cb.contains { $0.address == x.address } }) else {
            let ra = ca.last.map { "root port \($0.address)" } ?? "the root bus"
            let rb = cb.last.map { "root port \($0.address)" } ?? "the root bus"
            return Found(route: .rootComplex, bridges: [],
                         text: "they share no switch (\(a.address) under \(ra), \(b.address) under \(rb)): peer traffic crosses the root complex whatever ACS says")
        }
        let path = (ca.prefix { $0.address != common.address } + cb.prefix { $0.address != common.address }).sorted { $0.address < $1.address }
        let bridges = path.map { br -> BridgeACS in
            let unknown = br.isUnknown(.acsControl)
            let set = ACSControl(rawValue: br.acsControl ?? 0).intersection(.redirecting)
            return BridgeACS(address: br.address.description, acsControl: unknown ? nil : br.acsControl, unknown: unknown, redirects: unknown ? [] : set.names)
        }
        if bridges.isEmpty {
            return Found(route: .direct, bridges: [], text: "they sit on one bus below \(common.address): peer traffic goes through no other port")
        }
        let redirecting = bridges.filter { !$0.redirects.isEmpty }.sorted { $0.address < $1.address }
        if !redirecting.isEmpty {
            let list = redirecting.map { "\($0.address) (\($0.redirects.joined(separator: ", ")))" }.joined(separator: ", ")
            let param = "pci=config_acs=" + redirecting.map { "\(clearRedirects)@\($0.address)" }.joined(separator: ";")
            return Found(route: .redirected, bridges: bridges,
                         text: "ACS on \(list) redirects their peer traffic up to the root complex instead of across the switch below \(common.address)",
                         kernelParameter: param)
        }
        let unknown = bridges.filter(\.unknown)
        if !unknown.isEmpty {
            return Found(route: .unknown, bridges: bridges,
                         text: "the ACS Control of \(unknown.map(\.address).joined(separator: ", ")) could not be read (config space past 64 bytes needs root): run `vsmmu host` as root")
        }
        return Found(route: .direct, bridges: bridges,
                     text: "peer traffic stays below \(common.address): no ACS redirect on \(bridges.map(\.address).joined(separator: ", "))")
    }
}
