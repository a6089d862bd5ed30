import ArgumentParser
import VsmmuModel

struct Schema: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schema",
        abstract: "Print the JSON Schema (draft 2020-12) of the topology file, or of the host description.",
        discussion: """
        Editors use it for completion and checking: with the YAML language server, put
        # yaml-language-server: $schema=schemas/topology.schema.json
        at the top of a topology. The files under schemas/ are this command's output.
        """)

    enum Kind: String, ExpressibleByArgument, CaseIterable { case topology, host }

    @Option(help: "Which file format: topology or host.")
    var kind: Kind = .topology

    func run() throws {
        let doc = kind == .topology ? JSONSchemaGenerator.topology : JSONSchemaGenerator.host
        Console.standard().print(doc.rendered())
    }
}
