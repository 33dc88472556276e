import CeleryProtocol
import Foundation
import OrderedCollections

/// Golden files captured from real Python Celery by `Interop/capture_fixtures.py`.
enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func bytes(_ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: directory.appendingPathComponent(name)))
    }

    static func json(_ name: String) throws -> CeleryValue {
        try CeleryJSON.decode(try bytes(name))
    }

    static func names(suffix: String) -> [String] {
        let all = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return all.filter { $0.hasSuffix(suffix) }.map { String($0.dropLast(suffix.count)) }.sorted()
    }
}

/// The lossless typed form written by `Interop/typed.py`, so decoded values compare exactly with Python's.
func typed(_ value: CeleryValue) -> CeleryValue {
    switch value {
    case .null: return ["null": .null]
    case .bool(let flag): return ["bool": .bool(flag)]
    case .int(let number): return ["int": .string(String(number))]
    case .uint(let number): return ["int": .string(String(number))]
    case .bigInt(let number): return ["int": .string(number.description)]
    case .double(let number): return ["float": .string(number.description)]
    case .string(let text): return ["str": .string(text)]
    case .bytes(let bytes): return ["bytes": .string(Data(bytes).base64EncodedString())]
    case .array(let elements): return ["list": .array(elements.map(typed))]
    case .object(let entries):
        return ["dict": .array(entries.map { key, element in [.string(key), typed(element)] })]
    }
}
