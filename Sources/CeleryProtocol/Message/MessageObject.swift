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
    associatedtype Field: Sendable
    init()
    /// The object's keys in the order Celery's producer writes them, with the fields they fill.
    static var layout: KeyLayout<Field> { get }
    /// Keeps a member's value (a later member with the same key replaces it).
    mutating func set(_ field: Field, _ value: CeleryValue)
    /// Reads a member's value from the parser, which is at it, and keeps it: by default the value as parsed.
    mutating func read(_ field: Field, from parser: inout JSONParser) throws(CeleryProtocolError)
}

extension MessageFields {
    mutating func read(_ field: Field, from parser: inout JSONParser) throws(CeleryProtocolError) {
        set(field, try parser.parseValue())
    }

    init(_ object: CeleryObject) {
        self.init()
        for (key, value) in object { take(key, value) }
    }

    /// The member a key's UTF-8 bytes name; `nil` for a key these fields do not keep.
    static func field(_ key: UnsafeBufferPointer<UInt8>) -> Field? {
        layout.field(key)
    }

    /// Keeps `value` when `key` names one of the fields; a later member with the same key replaces it.
    mutating func take(_ key: String, _ value: CeleryValue) {
        var key = key
        if let field = key.withUTF8({ Self.field($0) }) { set(field, value) }
    }
}

/// The keys of a JSON object in the order Celery's and kombu's producers write them, each spelled as Python's
/// `json.dumps` writes it, quotes and separator included (`"name": `), with the field it fills (`nil`: a member that
/// is only checked). The parser compares the text with the spelling of the key it expects next, a few word
/// compares, before it reads a key and searches for it; a key out of that order is found here by name and the
/// expectation moves on from it.
struct KeyLayout<Field: Sendable>: Sendable {
    let entries: [(spelling: StaticString, field: Field?)]

    /// The position of the key whose (unquoted) UTF-8 bytes are `key`.
    func position(of key: UnsafeBufferPointer<UInt8>) -> Int? {
        guard let bytes = key.baseAddress else { return nil }  // an empty key names nothing
        for (position, entry) in entries.enumerated() where entry.spelling.utf8CodeUnitCount == key.count + 4 {
            if memcmp(entry.spelling.utf8Start + 1, bytes, key.count) == 0 { return position }
        }
        return nil
    }

    /// The field a key's UTF-8 bytes name.
    func field(_ key: UnsafeBufferPointer<UInt8>) -> Field? {
        position(of: key).flatMap { entries[$0].field }
    }
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
    var compression: CeleryValue = .null
    var redelivered: CeleryValue = .null

    enum Field {
        case id, task, retries, rootID, parentID, group, groupIndex, eta, expires, ignoreResult, shadow, timeLimit
        case argsRepr, kwargsRepr, compression, redelivered
    }

    init() {}

    static let layout = KeyLayout<Field>(entries: [
        (#""lang": "#, nil), (#""task": "#, .task), (#""id": "#, .id), (#""shadow": "#, .shadow), (#""eta": "#, .eta),
        (#""expires": "#, .expires), (#""group": "#, .group), (#""group_index": "#, .groupIndex),
        (#""retries": "#, .retries), (#""timelimit": "#, .timeLimit), (#""root_id": "#, .rootID),
        (#""parent_id": "#, .parentID), (#""argsrepr": "#, .argsRepr), (#""kwargsrepr": "#, .kwargsRepr),
        (#""origin": "#, nil), (#""ignore_result": "#, .ignoreResult), (#""replaced_task_nesting": "#, nil),
        (#""stamped_headers": "#, nil), (#""stamps": "#, nil), (#""compression": "#, .compression),
        (#""redelivered": "#, .redelivered),
    ])

    /// Inlined into the parser, which then moves each value into its field (outlined, it copied each one).
    @inline(__always)
    mutating func set(_ field: Field, _ value: CeleryValue) {
        switch field {
        case .id: id = value
        case .task: task = value
        case .retries: retries = value
        case .rootID: rootID = value
        case .parentID: parentID = value
        case .group: group = value
        case .groupIndex: groupIndex = value
        case .eta: eta = value
        case .expires: expires = value
        case .ignoreResult: ignoreResult = value
        case .shadow: shadow = value
        case .timeLimit: timeLimit = value
        case .argsRepr: argsRepr = value
        case .kwargsRepr: kwargsRepr = value
        case .compression: compression = value
        case .redelivered: redelivered = value
        }
    }
}

/// The `properties` the worker reads for every message.
struct PropertyFields: MessageFields, Sendable {
    var deliveryTag: CeleryValue = .null
    var deliveryInfo = DeliveryInfoFields()
    var priority: CeleryValue = .null
    var bodyEncoding: CeleryValue = .null

    enum Field {
        case deliveryTag, deliveryInfo, priority, bodyEncoding
    }

    init() {}

    static let layout = KeyLayout<Field>(entries: [
        (#""correlation_id": "#, nil), (#""reply_to": "#, nil), (#""delivery_mode": "#, nil),
        (#""delivery_info": "#, .deliveryInfo), (#""priority": "#, .priority), (#""body_encoding": "#, .bodyEncoding),
        (#""delivery_tag": "#, .deliveryTag),
    ])

    mutating func set(_ field: Field, _ value: CeleryValue) {
        switch field {
        case .deliveryTag: deliveryTag = value
        case .deliveryInfo: deliveryInfo = DeliveryInfoFields(value)
        case .priority: priority = value
        case .bodyEncoding: bodyEncoding = value
        }
    }

    /// `delivery_info` is read member by member into the three the worker reads; the others are only checked.
    mutating func read(_ field: Field, from parser: inout JSONParser) throws(CeleryProtocolError) {
        if field == .deliveryInfo {
            deliveryInfo = try parser.scanDeliveryInfo()
        } else {
            set(field, try parser.parseValue())
        }
    }
}

/// The members of `properties.delivery_info` the worker reads, each `nil` when missing or of another type (or when
/// `delivery_info` is not an object).
struct DeliveryInfoFields: Sendable {
    var exchange: String?
    var routingKey: String?
    var redelivered: Bool?

    enum Field { case exchange, routingKey, redelivered }

    static let layout = KeyLayout<Field>(entries: [
        (#""exchange": "#, .exchange), (#""routing_key": "#, .routingKey), (#""redelivered": "#, .redelivered),
    ])

    init() {}

    /// The members of a value already built (as `dict.get` reads them; nothing from another value).
    init(_ value: CeleryValue) {
        exchange = value["exchange"]?.stringValue
        routingKey = value["routing_key"]?.stringValue
        redelivered = value["redelivered"]?.boolValue
    }

    /// Keeps a member's value as its type allows (a later member replaces an earlier one, as in a Python `dict`).
    mutating func set(_ field: Field, _ value: CeleryValue) {
        switch field {
        case .exchange: exchange = value.stringValue
        case .routingKey: routingKey = value.stringValue
        case .redelivered: redelivered = value.boolValue
        }
    }
}
