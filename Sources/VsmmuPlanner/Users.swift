import VsmmuKernel
#if canImport(Glibc)
import Glibc
#endif

/// Resolves users from this machine's account database (getpwnam).
public struct SystemUserResolver: UserResolver {
    public init() {}

    public func resolve(_ user: String) throws(VsmmuError) -> ResolvedUser {
        if let uid = UInt32(user) { return ResolvedUser(name: user, uid: uid, gid: Self.gid(of: uid) ?? uid, note: "") }
        guard let pw = getpwnam(user) else {
            throw VsmmuError(.plan, "user '\(user)' does not exist on this host", hint: "create the account, or write its numeric uid")
        }
        return ResolvedUser(name: user, uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid, note: "")
    }

    static func gid(of uid: UInt32) -> UInt32? {
        guard let pw = getpwuid(uid) else { return nil }
        return pw.pointee.pw_gid
    }
}

/// For the simulated host, which is not this machine: a numeric uid as written, a
/// name as a stable stand-in uid (shown as such), so plans are the same everywhere.
public struct SimulatedUserResolver: UserResolver {
    public init() {}

    public func resolve(_ user: String) throws(VsmmuError) -> ResolvedUser {
        if let uid = UInt32(user) { return ResolvedUser(name: user, uid: uid, gid: uid, note: "") }
        // FNV-1a of the name into 60000..<65000: stable across runs and machines.
        var h: UInt32 = 2_166_136_261
        for b in user.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        let uid = 60000 + h % 5000
        return ResolvedUser(name: user, uid: uid, gid: uid, note: "simulated host: stand-in uid for \(user)")
    }
}
