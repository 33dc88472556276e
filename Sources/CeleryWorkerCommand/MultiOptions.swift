import Foundation

/// Options in the order they were given, each name once (Python's `OrderedDict` of `celery multi`): a flag's value
/// is `nil`.
struct OrderedOptions {
    private(set) var pairs: [(name: String, value: String?)] = []

    subscript(name: String) -> String?? {
        get { pairs.first { $0.name == name }.map { $0.value } }
        set {
            if let index = pairs.firstIndex(where: { $0.name == name }) {
                if let newValue { pairs[index].value = newValue } else { pairs.remove(at: index) }
            } else if let newValue {
                pairs.append((name, newValue))
            }
        }
    }

    /// Removes `name` and answers its value (`.some(nil)` for a flag), or `nil` when it was not given.
    mutating func pop(_ name: String) -> String?? {
        let value = self[name]
        self[name] = nil
        return value
    }

    /// `OrderedDict(self, **other)`: these options, updated and then extended by `other`'s.
    func merged(with other: OrderedOptions) -> OrderedOptions {
        var merged = self
        for (name, value) in other.pairs { merged[name] = .some(value) }
        return merged
    }
}

/// Celery's `NamespacedOptionParser`, which reads `celery multi`'s arguments: node names (or a count), options for
/// every node, options for some (`-c:1-3 4`, `--queues:w1=images`: the name or number after the colon), and anything
/// after `--` passed through as it is.
struct MultiArguments {
    let arguments: [String]
    /// Options for every node.
    var options = OrderedOptions()
    /// Node names, or one count.
    var values: [String] = []
    var passthrough = ""
    /// Options for some nodes, by what follows the option's colon, in the order first given.
    var namespaces: [(name: String, options: OrderedOptions)] = []

    init(_ arguments: [String]) {
        self.arguments = arguments
        let words = arguments.filter { !$0.isEmpty }
        var position = 0
        while position < words.count {
            let word = words[position]
            if word == "--" {
                passthrough = words[position...].joined(separator: " ")
                break
            } else if word.hasPrefix("--") {
                let option = word.dropFirst(2)
                if let equals = option.firstIndex(of: "=") {
                    add(String(option[..<equals]), String(option[option.index(after: equals)...]), short: false)
                } else {
                    add(String(option), nil, short: false)
                }
            } else if word.hasPrefix("-") {
                var value: String?
                if position + 1 < words.count, !words[position + 1].hasPrefix("-") {
                    value = words[position + 1]
                    position += 1
                }
                add(String(word.dropFirst()), value, short: true)
            } else {
                values.append(word)
            }
            position += 1
        }
    }

    private mutating func add(_ name: String, _ value: String?, short: Bool) {
        let prefix = short ? "-" : "--"
        guard let colon = name.firstIndex(of: ":") else {
            options[prefix + name] = .some(value)
            return
        }
        let namespace = String(name[name.index(after: colon)...])
        update(namespace) { $0[prefix + name[..<colon]] = .some(value) }
    }

    /// The options of `namespace`, created empty when there are none yet (Python's `defaultdict`).
    mutating func update(_ namespace: String, _ change: (inout OrderedOptions) -> Void) {
        if let index = namespaces.firstIndex(where: { $0.name == namespace }) {
            change(&namespaces[index].options)
        } else {
            var options = OrderedOptions()
            change(&options)
            namespaces.append((namespace, options))
        }
    }

    func namespace(_ name: String) -> OrderedOptions? {
        namespaces.first { $0.name == name }?.options
    }

    mutating func removeNamespace(_ name: String) {
        namespaces.removeAll { $0.name == name }
    }
}
