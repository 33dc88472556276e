import OrderedCollections

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A JSON object of a message (its `headers` or `properties`): the members the worker reads for every message,
/// taken while the envelope was parsed, and the whole object, kept as the text it arrived in and built only when
/// something reads all of it (the dictionary, with a hash table for Celery's 19 header keys, is seldom needed).
/// Immutable and shared: copying a message copies one reference.
final class MessageObject<Fields: MessageFields & Sendable>: Sendable {
    private enum Storage: Sendable {
        case built(CeleryObject)
        /// The message text and the range of the object in it. Every member was parsed once already, so parsing
        /// it again cannot fail.
        case text([UInt8], Range<Int>)
    }

    private let storage: Storage
    /// The members the worker reads.
    let fields: Fields

    init(_ object: CeleryObject) {
        storage = .built(object)
        fields = Fields(object)
    }

    init(text: [UInt8], range: Range<Int>, fields: Fields) {
        storage = .text(text, range)
        self.fields = fields
    }

    /// The whole object.
    var object: CeleryObject {
        switch storage {
        case .built(let object):
            return object
        case .text(let text, let range):
            let parsed = text.withUnsafeBufferPointer { buffer -> CeleryValue? in
                var parser = JSONParser(buffer: buffer, at: range.lowerBound)
                return try? parser.parseValue()
            }
            guard case .object(let object)? = parsed else {
                preconditionFailure("an object that parsed once no longer parses")
            }
            return object
        }
    }
}

/// The members of a message object (`headers`, `properties`) that the worker reads for every message, each as
/// sent (`.null` when missing), taken one by one as the object is parsed. As in a Python `dict`, a repeated key
/// keeps its last value.
protocol MessageFields {
    associatedtype Field
    init()
    /// The member a key's UTF-8 bytes name; `nil` for a key these fields do not keep.
    static func field(_ key: UnsafeBufferPointer<UInt8>) -> Field?
    subscript(field: Field) -> CeleryValue { get set }
}

extension MessageFields {
    init(_ object: CeleryObject) {
        self.init()
        for (key, value) in object { take(key, value) }
    }

    /// Keeps `value` when `key` names one of the fields; a later member with the same key replaces it.
    mutating func take(_ key: String, _ value: CeleryValue) {
        var key = key
        if let field = key.withUTF8({ Self.field($0) }) { self[field] = value }
    }
}

/// Which of `names` a key's UTF-8 bytes spell.
func lookUp<Field>(_ key: UnsafeBufferPointer<UInt8>, in names: [(name: StaticString, field: Field)]) -> Field? {
    guard let bytes = key.baseAddress else { return nil }  // an empty key names nothing
    for entry in names where entry.name.utf8CodeUnitCount == key.count {
        if memcmp(entry.name.utf8Start, bytes, key.count) == 0 { return entry.field }
    }
    return nil
}

/// The protocol v2 headers the worker reads for every task.
struct TaskHeaderFields: MessageFields, Sendable {
    var id: CeleryValue = .null
    var task: CeleryValue = .null
    var retries: CeleryValue = .null
    var rootID: CeleryValue = .null
    var parentID: CeleryValue = .null
    var group: CeleryValue = .null
    var groupIndex: CeleryValue = .null
    var eta: CeleryValue = .null
    var expires: CeleryValue = .null
    var ignoreResult: CeleryValue = .null
    var shadow: CeleryValue = .null
    var timeLimit: CeleryValue = .null
    var argsRepr: CeleryValue = .null
    var kwargsRepr: CeleryValue = .null
    var redelivered: CeleryValue = .null

    enum Field {
        case id, task, retries, rootID, parentID, group, groupIndex, eta, expires, ignoreResult, shadow, timeLimit
        case argsRepr, kwargsRepr, redelivered

        fileprivate static let names: [(name: StaticString, field: Field)] = [
            ("id", .id), ("task", .task), ("retries", .retries), ("root_id", .rootID), ("parent_id", .parentID),
            ("group", .group), ("group_index", .groupIndex), ("eta", .eta), ("expires", .expires),
            ("ignore_result", .ignoreResult), ("shadow", .shadow), ("timelimit", .timeLimit),
            ("argsrepr", .argsRepr), ("kwargsrepr", .kwargsRepr), ("redelivered", .redelivered),
        ]
    }

    init() {}

    static func field(_ key: UnsafeBufferPointer<UInt8>) -> Field? {
        lookUp(key, in: Field.names)
    }

    subscript(field: Field) -> CeleryValue {
        get {
            switch field {
            case .id: id
            case .task: task
            case .retries: retries
            case .rootID: rootID
            case .parentID: parentID
            case .group: group
            case .groupIndex: groupIndex
            case .eta: eta
            case .expires: expires
            case .ignoreResult: ignoreResult
            case .shadow: shadow
            case .timeLimit: timeLimit
            case .argsRepr: argsRepr
            case .kwargsRepr: kwargsRepr
            case .redelivered: redelivered
            }
        }
        set {
            switch field {
            case .id: id = newValue
            case .task: task = newValue
            case .retries: retries = newValue
            case .rootID: rootID = newValue
            case .parentID: parentID = newValue
            case .group: group = newValue
            case .groupIndex: groupIndex = newValue
            case .eta: eta = newValue
            case .expires: expires = newValue
            case .ignoreResult: ignoreResult = newValue
            case .shadow: shadow = newValue
            case .timeLimit: timeLimit = newValue
            case .argsRepr: argsRepr = newValue
            case .kwargsRepr: kwargsRepr = newValue
            case .redelivered: redelivered = newValue
            }
        }
    }
}

/// The `properties` the worker reads for every message.
struct PropertyFields: MessageFields, Sendable {
    var deliveryTag: CeleryValue = .null
    var deliveryInfo: CeleryValue = .null
    var priority: CeleryValue = .null
    var bodyEncoding: CeleryValue = .null

    enum Field {
        case deliveryTag, deliveryInfo, priority, bodyEncoding

        fileprivate static let names: [(name: StaticString, field: Field)] = [
            ("delivery_tag", .deliveryTag), ("delivery_info", .deliveryInfo), ("priority", .priority),
            ("body_encoding", .bodyEncoding),
        ]
    }

    init() {}

    static func field(_ key: UnsafeBufferPointer<UInt8>) -> Field? {
        lookUp(key, in: Field.names)
    }

    subscript(field: Field) -> CeleryValue {
        get {
            switch field {
            case .deliveryTag: deliveryTag
            case .deliveryInfo: deliveryInfo
            case .priority: priority
            case .bodyEncoding: bodyEncoding
            }
        }
        set {
            switch field {
            case .deliveryTag: deliveryTag = newValue
            case .deliveryInfo: deliveryInfo = newValue
            case .priority: priority = newValue
            case .bodyEncoding: bodyEncoding = newValue
            }
        }
    }
}
