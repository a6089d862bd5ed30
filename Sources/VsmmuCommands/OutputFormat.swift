import ArgumentParser

/// The one --format vocabulary: `text` for people (the default), `json` for pipelines,
/// `yaml` where a document is shown; each command takes those that make sense.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json, yaml
}
