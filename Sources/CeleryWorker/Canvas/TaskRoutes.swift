import CeleryProtocol

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Celery's `task_routes` in the forms a configuration file can hold (`celery.app.routes.MapRoute`): a task name,
/// or a pattern with `*`, maps to routing options (`queue`, `exchange`, `routing_key`, `priority`, …) or to a
/// queue name. A name is looked up exactly first, then against the patterns (the keys with a `*`) in their order,
/// matched whole as Python's `fnmatch` matches them (`*` any text, `?` one character, `[…]` a set). Router functions
/// and regular expressions, which Python imports or compiles, cannot be given.
public struct TaskRoutes: Sendable, Equatable {
    /// One table of routes (one `MapRoute`); a list of them is tried in order, as Celery tries its routers.
    public struct Table: Sendable, Equatable {
        var exact: [String: CeleryObject] = [:]
        var patterns: [(pattern: String, options: CeleryObject)] = []
        /// The entries as given, for `inspect conf`.
        let entries: [(pattern: String, options: CeleryObject)]

        /// The table's entries, in their order.
        public init(_ entries: [(pattern: String, options: CeleryObject)]) {
            self.entries = entries
            for (pattern, options) in entries {
                if pattern.contains("*") {
                    patterns.append((pattern, options))
                } else if exact[pattern] == nil {
                    exact[pattern] = options
                }
            }
        }

        public static func == (left: Table, right: Table) -> Bool {
            left.exact == right.exact && left.patterns.count == right.patterns.count
                && zip(left.patterns, right.patterns).allSatisfy { $0.pattern == $1.pattern && $0.options == $1.options }
        }

        func route(for name: String) -> CeleryObject? {
            if let options = exact[name] { return options }
            // Python's fnmatch: no backslash escapes, and `*` crosses `/` and leading dots.
            return patterns.first { fnmatch($0.pattern, name, FNM_NOESCAPE) == 0 }?.options
        }
    }

    public var tables: [Table]

    public init(_ tables: [Table] = []) {
        self.tables = tables
    }

    /// A route value as Celery takes it: options, or a queue name (`{"queue": name}`).
    public static func options(from value: CeleryValue) -> CeleryObject? {
        switch value {
        case .string(let queue): ["queue": .string(queue)]
        case .object(let options): options
        default: nil
        }
    }

    /// The routes as Python's `inspect conf` shows a mapping (or a list of them); `nil` without routes.
    var value: CeleryValue? {
        let tables = tables.map { table in
            var object = CeleryObject()
            for (pattern, options) in table.entries { object[pattern] = .object(options) }
            return CeleryValue.object(object)
        }
        guard let first = tables.first else { return nil }
        return tables.count == 1 ? first : .array(tables)
    }

    /// The route of the first table that has one for `name`.
    func route(for name: String) -> CeleryObject? {
        for table in tables {
            if let options = table.route(for: name) { return options }
        }
        return nil
    }

    /// Celery's `Router.route`: the route's options under the ones given (`lpmerge`: a given option that is not
    /// `None` wins).
    func routed(_ options: CeleryObject, task name: String) -> CeleryObject {
        guard let route = route(for: name) else { return options }
        var merged = route
        for (key, value) in options where value != .null { merged[key] = value }
        return merged
    }
}
