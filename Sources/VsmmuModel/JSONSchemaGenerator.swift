/// JSON Schema (draft 2020-12) generated from the same `SchemaType` the checker uses.
/// Scalars are described as a YAML 1.2 core-schema reader types them (what editors
/// use): `0x10` is an integer, `0b101` and `16GiB` are strings, `on` is a string.
public enum JSONSchemaGenerator {
    public static func document(_ root: SchemaType, id: String, title: String) -> JSONValue {
        guard case .object(var o) = schema(root) else { return .null }
        o["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        o["$id"] = .string(id)
        o["title"] = .string(title)
        return .object(o)
    }

    public static var topology: JSONValue {
        document(TopologySchema.root, id: "https://vsmmu.dev/schemas/topology.schema.json", title: "vsmmu Topology (vsmmu/v1)")
    }

    public static var host: JSONValue {
        document(HostSchema.root, id: "https://vsmmu.dev/schemas/host.schema.json", title: "vsmmu Host description (vsmmu/v1)")
    }

    static let uintPattern = "^(0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9]+)$"
    static let sizePattern = "^(0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9]+)(KiB|MiB|GiB|TiB)?$"
    static let pciPattern = "^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[01][0-9a-fA-F]\\.[0-7]$"

    static func schema(_ t: SchemaType) -> JSONValue {
        switch t {
        case .object(let fields, let description):
            var props: [String: JSONValue] = [:]
            for f in fields { props[f.name] = schema(f.type) }
            var o: [String: JSONValue] = ["type": "object", "description": .string(description),
                                          "properties": .object(props), "additionalProperties": false]
            let req = fields.filter(\.required).map { JSONValue.string($0.name) }
            if !req.isEmpty { o["required"] = .array(req) }
            return .object(o)
        case .array(let element, let description):
            return ["anyOf": [["type": "array", "items": schema(element)], ["type": "null"]], "description": .string(description)]
        case .scalar(let kind, let description):
            guard case .object(var o) = scalar(kind) else { return .null }
            o["description"] = .string(description)
            return .object(o)
        }
    }

    static func uint(max: UInt64) -> JSONValue {
        ["anyOf": [["type": "integer", "minimum": 0, "maximum": .uint(max)], ["type": "string", "pattern": .string(uintPattern)]]]
    }

    static func scalar(_ k: ScalarKind) -> JSONValue {
        switch k {
        case .name: return ["type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"]
        case .text: return ["type": "string"]
        case .constant(let w): return ["const": .string(w)]
        case .uint(let max): return uint(max: max)
        case .int(let min, let max): return ["type": "integer", "minimum": .int(min), "maximum": .int(max)]
        case .size: return ["anyOf": [["type": "integer", "minimum": 0], ["type": "string", "pattern": .string(sizePattern)]]]
        case .pciAddress: return ["type": "string", "pattern": .string(pciPattern)]
        case .deviceHost:
            return ["type": "string", "pattern": "^([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[01][0-9a-fA-F]\\.[0-7]|selftest:(0|[1-9][0-9]{0,5}))$"]
        case .choice(let words): return ["enum": .array(words.map { .string($0) })]
        case .uintOrAuto(let max):
            return ["anyOf": [["const": "auto"], ["type": "integer", "minimum": 0, "maximum": .uint(max)]]]
        case .intChoiceOrAuto(let values):
            return ["enum": .array([.string("auto")] + values.map { .int(Int64($0)) })]
        case .bool: return ["type": "boolean"]
        case .nullableText: return ["type": ["string", "null"]]
        case .nullableDriverName: return ["anyOf": [["type": "string", "pattern": "^(?!\\.\\.?$)[A-Za-z0-9_.-]{1,255}$"], ["type": "null"]]]
        case .nullableUInt(let max):
            return ["anyOf": [["type": "integer", "minimum": 0, "maximum": .uint(max)], ["type": "null"]]]
        case .userOrUID:
            return ["anyOf": [["type": "integer", "minimum": 0, "maximum": .uint(UInt64(UInt32.max))], ["type": "string", "pattern": "^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$"]]]
        }
    }
}
