import CYAML

/// Composes one YAML document into `Node`s on libyaml's event API.
public enum YAMLComposer {
    /// Returns the document's root, or nil for a file with no document (empty, or
    /// comments only). Rejects several documents, duplicate keys, non-scalar keys,
    /// explicit tags, and anything beyond `limits`.
    public static func compose(_ bytes: [UInt8], limits: YAMLLimits = YAMLLimits()) throws(YAMLError) -> Node? {
        if bytes.count > limits.maxBytes {
            throw YAMLError("document is \(bytes.count) bytes, more than the limit of \(limits.maxBytes) bytes", at: Mark(line: 1, column: 1))
        }
        var composer = EventComposer(limits: limits)
        composer.source = bytes
        return try composer.run(bytes)
    }

    /// Parses events only, building nothing: the baseline the benchmark compares against.
    public static func countEvents(_ bytes: [UInt8]) -> Int {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return -1 }
        defer { yaml_parser_delete(&parser) }
        var count = 0
        return bytes.withUnsafeBufferPointer { buf -> Int in
            yaml_parser_set_input_string(&parser, buf.baseAddress, buf.count)
            var event = yaml_event_t()
            while true {
                guard yaml_parser_parse(&parser, &event) == 1 else { return -1 }
                count += 1
                let done = event.type == YAML_STREAM_END_EVENT
                yaml_event_delete(&event)
                if done { return count }
            }
        }
    }
}

private struct EventComposer {
    let limits: YAMLLimits
    var anchors: [String: (node: Node, weight: Int)] = [:]
    var nodes = 0

    init(limits: YAMLLimits) { self.limits = limits }

    /// A collection under construction. Its children wait in the shared `values`
    /// stack from `start` on; at its end they move into one exactly-sized array
    /// (one allocation per collection instead of several as an array grows).
    struct Frame {
        let isMapping: Bool
        let mark: Mark
        let anchor: String?
        let start: Int
        /// Keys seen so far, for duplicate detection; only built for large mappings
        /// (a linear scan is cheaper below that).
        var seenKeys: [String: Mark]?
        /// `nodes` when the collection started: its weight (nodes it expands to, aliases
        /// counted as copies) is the difference at its end, with no per-child bookkeeping.
        let nodesAtStart: Int
    }

    /// Children of every open collection, innermost last.
    var values: [Node] = []

    static func mark(_ m: yaml_mark_t) -> Mark { Mark(line: Int(m.line) + 1, column: Int(m.column) + 1) }

    static func string(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        guard let p else { return nil }
        return String(cString: UnsafeRawPointer(p).assumingMemoryBound(to: CChar.self))
    }

    mutating func run(_ bytes: [UInt8]) throws(YAMLError) -> Node? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else {
            throw YAMLError("cannot initialise the YAML parser (out of memory)", at: Mark(line: 1, column: 1))
        }
        defer { yaml_parser_delete(&parser) }
        // libyaml reads from a pointer that must outlive the whole parse; a private copy
        // keeps the event loop out of a closure (cheaper, and plain `throws`).
        let input = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, bytes.count))
        defer { input.deallocate() }
        _ = input.initialize(from: bytes)
        yaml_parser_set_input_string(&parser, input.baseAddress, bytes.count)
        return try loop(&parser)
    }

    mutating func loop(_ parser: inout yaml_parser_t) throws(YAMLError) -> Node? {
        var stack: [Frame] = []
        var root: Node?
        var documents = 0
        var event = yaml_event_t()
        while true {
            guard yaml_parser_parse(&parser, &event) == 1 else {
                let problem = parser.problem.map { String(cString: $0) } ?? "syntax error"
                var message = problem
                if let context = parser.context.map({ String(cString: $0) }) { message = "\(problem) \(context)" }
                if parser.error == YAML_READER_ERROR {
                    // The reader reports a byte offset, not a line: find the line ourselves.
                    throw YAMLError("\(problem) (the file must be UTF-8 text)", at: lineOf(offset: Int(parser.problem_offset)))
                }
                throw YAMLError(message, at: EventComposer.mark(parser.problem_mark))
            }
            defer { yaml_event_delete(&event) }
            let here = EventComposer.mark(event.start_mark)
            switch event.type {
            case YAML_STREAM_START_EVENT, YAML_DOCUMENT_END_EVENT:
                break
            case YAML_STREAM_END_EVENT:
                return root
            case YAML_DOCUMENT_START_EVENT:
                documents += 1
                if documents > 1 {
                    throw YAMLError("the file holds more than one YAML document; put one topology per file", at: here)
                }
            case YAML_ALIAS_EVENT:
                let name = EventComposer.string(event.data.alias.anchor) ?? ""
                guard let target = anchors[name] else {
                    throw YAMLError("alias *\(name) names no anchor defined before it", at: here)
                }
                try count(target.weight, at: here)
                try add(Node(target.node.content, mark: here), to: &stack, root: &root)
            case YAML_SCALAR_EVENT:
                let s = event.data.scalar
                if let tag = EventComposer.string(s.tag), !tag.isEmpty {
                    throw YAMLError("explicit tags such as \(tag) are not supported; write the value plainly", at: here)
                }
                if s.length > limits.maxScalarBytes {
                    throw YAMLError("a scalar of \(s.length) bytes is more than the limit of \(limits.maxScalarBytes) bytes", at: here)
                }
                let text = s.value.map { p in
                    String(decoding: UnsafeBufferPointer(start: p, count: s.length), as: UTF8.self)
                } ?? ""
                let plain = s.style == YAML_PLAIN_SCALAR_STYLE
                try count(1, at: here)
                let node = Node(.scalar(text, plain: plain), mark: here)
                if let anchor = EventComposer.string(s.anchor) { anchors[anchor] = (node, 1) }
                try add(node, to: &stack, root: &root)
            case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                let isMapping = event.type == YAML_MAPPING_START_EVENT
                let tag = isMapping ? event.data.mapping_start.tag : event.data.sequence_start.tag
                if let tag = EventComposer.string(tag), !tag.isEmpty {
                    throw YAMLError("explicit tags such as \(tag) are not supported", at: here)
                }
                if stack.count >= limits.maxDepth {
                    throw YAMLError("nesting is deeper than \(limits.maxDepth) levels", at: here)
                }
                try count(1, at: here)
                let anchor = EventComposer.string(isMapping ? event.data.mapping_start.anchor : event.data.sequence_start.anchor)
                stack.append(Frame(isMapping: isMapping, mark: here, anchor: anchor, start: values.count, nodesAtStart: nodes))
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                let frame = stack.removeLast()
                let content: Node.Content
                if frame.isMapping {
                    var pairs: [(key: Node, value: Node)] = []
                    pairs.reserveCapacity((values.count - frame.start) / 2)
                    var i = frame.start
                    while i + 1 < values.count {
                        pairs.append((values[i], values[i + 1]))
                        i += 2
                    }
                    content = .mapping(pairs)
                } else {
                    content = .sequence(Array(values[frame.start...]))
                }
                values.removeSubrange(frame.start...)
                let node = Node(content, mark: frame.mark)
                if let anchor = frame.anchor { anchors[anchor] = (node, nodes - frame.nodesAtStart + 1) }
                try add(node, to: &stack, root: &root)
            default:
                break
            }
        }
    }

    var source: [UInt8] = []

    /// Line and column of a byte offset (the reader reports offsets only).
    func lineOf(offset: Int) -> Mark {
        var line = 1, column = 1, i = 0
        let end = min(offset, source.count)
        while i < end {
            let n = LineBreak.length(at: i, in: source)
            if n > 0 { line += 1; column = 1; i += n; continue }
            if source[i] & 0xC0 != 0x80 { column += 1 }
            i += 1
        }
        return Mark(line: line, column: column)
    }

    mutating func count(_ n: Int, at mark: Mark) throws(YAMLError) {
        nodes += n
        if nodes > limits.maxNodes {
            throw YAMLError("the document expands to more than \(limits.maxNodes) nodes (alias bomb?)", at: mark)
        }
    }

    mutating func add(_ node: Node, to stack: inout [Frame], root: inout Node?) throws(YAMLError) {
        let top = stack.count - 1
        guard top >= 0 else {
            root = node
            return
        }
        // In a mapping, children alternate key, value: an even count means `node` is a key.
        let start = stack[top].start
        if stack[top].isMapping && (values.count - start) % 2 == 0 {
            guard case .scalar(let text, _) = node.content else {
                throw YAMLError("mapping keys must be plain words, not a \(node.kindName)", at: node.mark)
            }
            if values.count - start < 32 {
                var i = start
                while i < values.count {
                    if case .scalar(let key, _) = values[i].content, key == text {
                        throw YAMLError("duplicate key '\(text)' (first at line \(values[i].mark.line))", at: node.mark)
                    }
                    i += 2
                }
            } else {
                if stack[top].seenKeys == nil {
                    var seen: [String: Mark] = [:]
                    var i = start
                    while i < values.count { seen[values[i].scalar ?? ""] = values[i].mark; i += 2 }
                    stack[top].seenKeys = seen
                }
                if let first = stack[top].seenKeys![text] {
                    throw YAMLError("duplicate key '\(text)' (first at line \(first.line))", at: node.mark)
                }
                stack[top].seenKeys![text] = node.mark
            }
        }
        values.append(node)
    }
}
