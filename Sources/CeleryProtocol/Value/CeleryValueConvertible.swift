import OrderedCollections

/// A Swift value that can be sent as a Celery argument or result.
public protocol CeleryValueEncodable: Sendable {
    /// The value as Celery carries it.
    var celeryValue: CeleryValue { get }
}

/// A Swift value that can be read from a Celery argument or result.
public protocol CeleryValueDecodable: Sendable {
    /// Reads the value; throws ``CeleryValueConversionError`` when the shape does not fit.
    init(celeryValue: CeleryValue) throws(CeleryValueConversionError)
}

/// Both directions.
public typealias CeleryValueConvertible = CeleryValueEncodable & CeleryValueDecodable

/// A value did not have the type a task asked for.
public struct CeleryValueConversionError: Error, Sendable, CustomStringConvertible {
    /// The Swift type that was asked for.
    public var expected: String
    /// The value that was found.
    public var found: CeleryValue

    public init(expected: String, found: CeleryValue) {
        self.expected = expected
        self.found = found
    }

    public var description: String { "expected \(expected), got \(PythonRepr.truncated(PythonRepr.repr(found), limit: 80))" }
}

extension CeleryValue: CeleryValueConvertible {
    public var celeryValue: CeleryValue { self }
    public init(celeryValue: CeleryValue) { self = celeryValue }
}

extension Int: CeleryValueConvertible {
    public var celeryValue: CeleryValue { .int(Int64(self)) }
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        switch celeryValue {
        case .int(let value): if let exact = Int(exactly: value) { self = exact; return }
        case .uint(let value): if let exact = Int(exactly: value) { self = exact; return }
        case .double(let value): if let exact = Int(exactly: value) { self = exact; return }
        default: break
        }
        throw CeleryValueConversionError(expected: "Int", found: celeryValue)
    }
}

extension Int64: CeleryValueConvertible {
    public var celeryValue: CeleryValue { .int(self) }
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        self = Int64(try Int(celeryValue: celeryValue))
    }
}

extension UInt64: CeleryValueConvertible {
    public var celeryValue: CeleryValue { self <= UInt64(Int64.max) ? .int(Int64(self)) : .uint(self) }
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        switch celeryValue {
        case .uint(let value): self = value
        case .int(let value) where value >= 0: self = UInt64(value)
        default: throw CeleryValueConversionError(expected: "UInt64", found: celeryValue)
        }
    }
}

extension Double: CeleryValueConvertible {
    public var celeryValue: CeleryValue { .double(self) }
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        guard let value = celeryValue.doubleValue else {
            throw CeleryValueConversionError(expected: "Double", found: celeryValue)
        }
        self = value
    }
}

extension Bool: CeleryValueConvertible {
    public var celeryValue: CeleryValue { .bool(self) }
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        guard case .bool(let value) = celeryValue else {
            throw CeleryValueConversionError(expected: "Bool", found: celeryValue)
        }
        self = value
    }
}

extension String: CeleryValueConvertible {
    public var celeryValue: CeleryValue { .string(self) }
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        guard case .string(let value) = celeryValue else {
            throw CeleryValueConversionError(expected: "String", found: celeryValue)
        }
        self = value
    }
}

extension Optional: CeleryValueEncodable where Wrapped: CeleryValueEncodable {
    public var celeryValue: CeleryValue { self?.celeryValue ?? .null }
}

extension Optional: CeleryValueDecodable where Wrapped: CeleryValueDecodable {
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        self = celeryValue.isNull ? nil : try Wrapped(celeryValue: celeryValue)
    }
}

extension Array: CeleryValueEncodable where Element: CeleryValueEncodable {
    public var celeryValue: CeleryValue { .array(map(\.celeryValue)) }
}

extension Array: CeleryValueDecodable where Element: CeleryValueDecodable {
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        guard case .array(let elements) = celeryValue else {
            throw CeleryValueConversionError(expected: "Array", found: celeryValue)
        }
        var result: [Element] = []
        result.reserveCapacity(elements.count)
        for element in elements { result.append(try Element(celeryValue: element)) }
        self = result
    }
}

extension Dictionary: CeleryValueEncodable where Key == String, Value: CeleryValueEncodable {
    public var celeryValue: CeleryValue {
        .object(OrderedDictionary(uniqueKeysWithValues: map { ($0.key, $0.value.celeryValue) }))
    }
}

extension Dictionary: CeleryValueDecodable where Key == String, Value: CeleryValueDecodable {
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        guard case .object(let entries) = celeryValue else {
            throw CeleryValueConversionError(expected: "Dictionary", found: celeryValue)
        }
        var result: [String: Value] = [:]
        for (key, element) in entries { result[key] = try Value(celeryValue: element) }
        self = result
    }
}

extension OrderedDictionary: CeleryValueEncodable where Key == String, Value: CeleryValueEncodable {
    public var celeryValue: CeleryValue { .object(mapValues(\.celeryValue)) }
}

extension OrderedDictionary: CeleryValueDecodable where Key == String, Value: CeleryValueDecodable {
    public init(celeryValue: CeleryValue) throws(CeleryValueConversionError) {
        guard case .object(let entries) = celeryValue else {
            throw CeleryValueConversionError(expected: "OrderedDictionary", found: celeryValue)
        }
        var result = OrderedDictionary<String, Value>()
        for (key, element) in entries { result[key] = try Value(celeryValue: element) }
        self = result
    }
}
