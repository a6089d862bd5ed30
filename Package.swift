// swift-tools-version: 6.1
// vsmmu: declarative accelerated-vSMMU provisioning over Linux iommufd.
// Layering (dependencies point one way, top to bottom):
//   CYAML (system libyaml) -> VsmmuYAML (composer with marks)
//   CVsmmuUAPI (own 7.2 uAPI structs, ioctl shim) -> VsmmuLinux (real ioctls, sysfs)
//   VsmmuKernel (kernel port, errno, uAPI values, PCI addresses)
//   VsmmuModel (topology/host models, validation, schema)
//   VsmmuSim (simulated kernel implementing the port)
//   VsmmuPlanner (desired graph, allocations, diff, operations)
//   VsmmuExecutor (lock, journal, apply, verify)
//   VsmmuProvisioning (sessions, the guest lifecycle: the API below the CLI and the agent)
//   VsmmuCommands (CLI commands) -> vsmmu (one-file main)
import Foundation
import PackageDescription

let package = Package(
    name: "vsmmu",
    products: [
        .executable(name: "vsmmu", targets: ["vsmmu"]),
        .library(name: "VsmmuCommands", targets: ["VsmmuCommands"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CYAML",
            pkgConfig: "yaml-0.1",
            providers: [.apt(["libyaml-dev"])]
        ),
        .target(name: "VsmmuYAML", dependencies: ["CYAML"]),
        .target(name: "VsmmuKernel"),
        // Files under the state directory: openat from one directory fd, never following links.
        .target(name: "VsmmuFiles"),
        .target(name: "CVsmmuUAPI"),
        .target(name: "VsmmuLinux", dependencies: ["CVsmmuUAPI", "VsmmuKernel"]),
        .target(name: "VsmmuIPC", dependencies: ["CVsmmuUAPI"]),
        .target(name: "VsmmuModel", dependencies: ["VsmmuYAML", "VsmmuKernel"]),
        .target(name: "VsmmuSim", dependencies: ["VsmmuKernel", "VsmmuFiles"]),
        .target(name: "VsmmuPlanner", dependencies: ["VsmmuKernel", "VsmmuModel"]),
        .target(name: "VsmmuExecutor", dependencies: ["VsmmuPlanner", "VsmmuKernel", "VsmmuModel", "VsmmuFiles"]),
        .target(name: "VsmmuVMM", dependencies: ["VsmmuPlanner", "VsmmuKernel", "VsmmuModel"]),
        // The provisioning API the CLI and the agent both call: sessions, the guest lifecycle.
        .target(
            name: "VsmmuProvisioning",
            dependencies: ["VsmmuExecutor", "VsmmuPlanner", "VsmmuSim", "VsmmuLinux", "VsmmuModel", "VsmmuKernel", "VsmmuYAML", "VsmmuVMM", "CVsmmuUAPI", "VsmmuFiles"]
        ),
        .target(
            name: "VsmmuCommands",
            dependencies: [
                "VsmmuModel", "VsmmuKernel", "VsmmuSim", "VsmmuLinux", "VsmmuPlanner", "VsmmuExecutor", "VsmmuIPC", "CVsmmuUAPI", "VsmmuVMM", "VsmmuProvisioning", "VsmmuFiles",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "vsmmu", dependencies: ["VsmmuCommands"]),
        // The remote executor (C, static in the lab guests): docs/remote-executor.md.
        .executableTarget(name: "vsmmu-remote", dependencies: ["CVsmmuUAPI"]),
        // Differential fidelity: a corpus of kernel calls run on a real and on the simulated kernel.
        .target(name: "VsmmuFidelity", dependencies: ["VsmmuKernel"]),
        .executableTarget(name: "vsmmu-fidelity", dependencies: ["VsmmuFidelity", "VsmmuKernel", "VsmmuSim", "VsmmuLinux", "VsmmuModel"]),
        // Shared by the test targets only.
        .target(name: "VsmmuTestSupport"),
        .executableTarget(
            name: "vsmmu-bench",
            dependencies: ["VsmmuModel", "VsmmuYAML", "VsmmuKernel", "VsmmuSim", "VsmmuPlanner", "VsmmuExecutor", "VsmmuIPC"]
        ),
        .testTarget(name: "VsmmuYAMLTests", dependencies: ["VsmmuYAML"]),
        .testTarget(name: "VsmmuModelTests", dependencies: ["VsmmuModel", "VsmmuYAML", "VsmmuKernel", "VsmmuTestSupport"]),
        .testTarget(name: "VsmmuSimTests", dependencies: ["VsmmuSim", "VsmmuKernel"]),
        .testTarget(
            name: "VsmmuFidelityTests",
            dependencies: ["VsmmuFidelity", "VsmmuSim", "VsmmuKernel", "VsmmuModel", "VsmmuTestSupport"],
            exclude: ["corpus"]
        ),
        .testTarget(
            name: "VsmmuLinuxTests",
            dependencies: ["VsmmuLinux", "CVsmmuUAPI", "VsmmuKernel", "VsmmuSim", "VsmmuModel", "VsmmuPlanner", "VsmmuExecutor", "VsmmuYAML", "VsmmuTestSupport"]
        ),
        .testTarget(
            name: "VsmmuPlannerTests",
            dependencies: ["VsmmuPlanner", "VsmmuExecutor", "VsmmuSim", "VsmmuModel", "VsmmuKernel", "VsmmuYAML", "VsmmuTestSupport", "VsmmuProvisioning", "VsmmuFiles"]
        ),
        .testTarget(
            name: "VsmmuCommandsTests",
            dependencies: ["VsmmuCommands", "VsmmuModel", "VsmmuVMM", "VsmmuTestSupport", "VsmmuIPC"],
            exclude: ["golden"]
        ),
    ]
)

// Fuzz targets (Fuzz/README.md): in the package only for scripts/fuzz.sh, which builds them
// with -sanitize=fuzzer in its own scratch directory (libFuzzer supplies their main).
if ProcessInfo.processInfo.environment["VSMMU_FUZZ"] == "1" {
    package.targets.append(.executableTarget(
        name: "vsmmu-fuzz",
        dependencies: ["VsmmuCommands", "VsmmuIPC", "VsmmuKernel", "VsmmuLinux", "VsmmuModel", "VsmmuPlanner", "VsmmuYAML", "CVsmmuUAPI"],
        path: "Fuzz/Sources/vsmmu-fuzz",
        swiftSettings: [.enableExperimentalFeature("Extern")]))
}
