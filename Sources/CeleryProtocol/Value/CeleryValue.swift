import OrderedCollections

/// A dynamic value as Celery carries it in task arguments, keyword arguments and results.
///
/// It round-trips everything Python's JSON and msgpack serializers send: `None`, booleans, integers (over the whole
/// signed and unsigned 64-bit range, and beyond it in JSON), floats (`1.0` stays a float), Unicode strings, byte
/// strings (msgpack `bin`, or kombu's tagged `bytes`/`base64` objects in JSON), lists and dicts. Dictionaries keep
/// their key order, and an empty list stays a list while an empty dict stays a dict.
public enum CeleryValue: Sendable, Hashable {
    case null
    case bool(Bool)
    /// A signed integer; every integer in `Int64`'s range is held here.
    case int(Int64)
    /// An unsigned integer above `Int64.max`.
    case uint(UInt64)
    /// An integer outside both 64-bit ranges (JSON only: msgpack has no form for it).
    case bigInt(CeleryBigInt)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case array([CeleryValue])
    case object(OrderedDictionary<String, CeleryValue>)
}

/// The dictionary type of ``CeleryValue/object(_:)``: string keys in the order they were sent.
public typealias CeleryObject = OrderedDictionary<String, CeleryValue>

extension CeleryValue {
    /// An empty dictionary value.
    public static let emptyObject = CeleryValue.object([:])

    /// The string, if this is a string.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The integer, if this is an integer that fits `Int`.
    public var intValue: Int? {
        switch self {
        case .int(let value): return Int(exactly: value)
        case .uint(let value): return Int(exactly: value)
        default: return nil
        }
    }

    /// The number as a `Double`, for integers and floats (`nil` for an integer beyond `Double`'s range).
    public var doubleValue: Double? {
        switch self {
        case .int(let value): return Double(value)
        case .uint(let value): return Double(value)
        case .bigInt(let value): return value.doubleValue
        case .double(let value): return value
        default: return nil
        }
    }

    /// The integer Python's `int(text)` reads from decimal digits (an optional `-`, then digits without a leading
    /// zero): ``int(_:)`` or ``uint(_:)`` within 64 bits, ``bigInt(_:)`` beyond; `nil` for other text, or for more
    /// than ``CeleryBigInt/maximumDigits`` digits.
    public init?(integerText text: String) {
        if let value = Int64(text), text == String(value) {
            self = .int(value)
        } else if let value = UInt64(text), text == String(value) {
            self = .uint(value)
        } else if let value = CeleryBigInt(text) {
            self = .bigInt(value)
        } else {
            return nil
        }
    }

    /// Whether msgpack can carry the value: every integer in it fits 64 bits.
    public var fitsMsgpack: Bool {
        switch self {
        case .bigInt: false
        case .array(let elements): elements.allSatisfy(\.fitsMsgpack)
        case .object(let entries): entries.values.allSatisfy(\.fitsMsgpack)
        default: true
        }
    }

    /// The boolean, if this is a boolean.
    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The elements, if this is a list.
    public var arrayValue: [CeleryValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    /// The entries, if this is a dictionary.
    public var objectValue: OrderedDictionary<String, CeleryValue>? {
        if case .object(let value) = self { return value }
        return nil
    }

    /// Whether this is `null`.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The value under `key` when this is a dictionary, else `nil`.
    public subscript(key: String) -> CeleryValue? {
        if case .object(let entries) = self { return entries[key] }
        return nil
    }
}

extension CeleryValue: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) { self = .null }
}

extension CeleryValue: ExpressibleByBooleanLiteral {
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension CeleryValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int64) { self = .int(value) }
}

extension CeleryValue: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) { self = .double(value) }
}

extension CeleryValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
}

extension CeleryValue: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: CeleryValue...) { self = .array(elements) }
}

extension CeleryValue: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, CeleryValue)...) {
        self = .object(OrderedDictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}
