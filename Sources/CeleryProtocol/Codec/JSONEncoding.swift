extension CeleryJSON {
    /// Encodes a value byte-for-byte as Python's `json.dumps` with kombu's encoder writes it: separators `", "` and
    /// `": "`, keys in their order, every non-ASCII character escaped as `\uXXXX`, floats as Python's `repr`.
    /// Byte strings become kombu's tagged `{"__type__": "bytes", …}` object (valid UTF-8) or `"base64"` (other).
    public static func encode(_ value: CeleryValue) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(128)
        encode(value, into: &output)
        return output
    }

    /// Appends the JSON form of `value` to `output`.
    public static func encode(_ value: CeleryValue, into output: inout [UInt8]) {
        switch value {
        case .null:
            output.append(contentsOf: "null".utf8)
        case .bool(let flag):
            output.append(contentsOf: (flag ? "true" : "false").utf8)
        case .int(let number):
            output.append(contentsOf: String(number).utf8)
        case .uint(let number):
            output.append(contentsOf: String(number).utf8)
        case .bigInt(let number):
            output.append(contentsOf: number.description.utf8)
        case .double(let number):
            appendDouble(number, into: &output)
        case .string(let text):
            appendString(text, into: &output)
        case .bytes(let bytes):
            if let text = UTF8Text.validating(bytes) {
                appendTagged("bytes", text, into: &output)
            } else {
                appendTagged("base64", String(decoding: Base64.encode(bytes), as: UTF8.self), into: &output)
            }
        case .array(let elements):
            output.append(UInt8(ascii: "["))
            for (position, element) in elements.enumerated() {
                if position > 0 { output.append(contentsOf: ", ".utf8) }
                encode(element, into: &output)
            }
            output.append(UInt8(ascii: "]"))
        case .object(let entries):
            output.append(UInt8(ascii: "{"))
            var first = true
            for (key, element) in entries {
                if !first { output.append(contentsOf: ", ".utf8) }
                first = false
                appendString(key, into: &output)
                output.append(contentsOf: ": ".utf8)
                encode(element, into: &output)
            }
            output.append(UInt8(ascii: "}"))
        }
    }

    /// Encodes a value as Python's `json.dumps(value, sort_keys=True, indent=indent)` writes it (how `celery inspect`
    /// prints a mapping): each member on a line of its own, `,` at the end of a line and `": "` after a key, keys in
    /// code point order, empty containers as `[]` and `{}`, non-ASCII escaped as ``encode(_:)`` escapes it.
    public static func encodeIndented(_ value: CeleryValue, indent: Int = 4) -> String {
        var output: [UInt8] = []
        appendIndented(value, indent: indent, depth: 0, into: &output)
        return String(decoding: output, as: UTF8.self)
    }

    private static func appendIndented(_ value: CeleryValue, indent: Int, depth: Int, into output: inout [UInt8]) {
        func newline(_ level: Int) {
            output.append(UInt8(ascii: "\n"))
            output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: indent * level))
        }
        switch value {
        case .array(let elements) where !elements.isEmpty:
            output.append(UInt8(ascii: "["))
            for (position, element) in elements.enumerated() {
                if position > 0 { output.append(UInt8(ascii: ",")) }
                newline(depth + 1)
                appendIndented(element, indent: indent, depth: depth + 1, into: &output)
            }
            newline(depth)
            output.append(UInt8(ascii: "]"))
        case .object(let entries) where !entries.isEmpty:
            output.append(UInt8(ascii: "{"))
            let keys = entries.keys.sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
            for (position, key) in keys.enumerated() {
                if position > 0 { output.append(UInt8(ascii: ",")) }
                newline(depth + 1)
                appendString(key, into: &output)
                output.append(contentsOf: ": ".utf8)
                appendIndented(entries[key] ?? .null, indent: indent, depth: depth + 1, into: &output)
            }
            newline(depth)
            output.append(UInt8(ascii: "}"))
        default:
            encode(value, into: &output)
        }
    }

    private static func appendTagged(_ type: String, _ text: String, into output: inout [UInt8]) {
        output.append(contentsOf: "{\"__type__\": ".utf8)
        appendString(type, into: &output)
        output.append(contentsOf: ", \"__value__\": ".utf8)
        appendString(text, into: &output)
        output.append(UInt8(ascii: "}"))
    }

    /// Appends a float as Python's `json.dumps` writes it: the shortest round-trip form (`repr`), `NaN`, `Infinity`.
    public static func appendDouble(_ number: Double, into output: inout [UInt8]) {
        if number.isNaN {
            output.append(contentsOf: "NaN".utf8)
        } else if number.isInfinite {
            output.append(contentsOf: (number < 0 ? "-Infinity" : "Infinity").utf8)
        } else {
            // The shortest round-trip form, as Python's repr writes it.
            output.append(contentsOf: PythonRepr.finite(number).utf8)
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Appends a string as Python's `json.dumps` writes it: quoted, every non-ASCII character escaped as `\uXXXX`.
    public static func appendString(_ text: String, into output: inout [UInt8]) {
        output.append(UInt8(ascii: "\""))
        // Most strings (ids, names, dates) are printable ASCII with nothing to escape: copied in one go.
        // In place (a native string): `withUTF8`, which is mutating, would copy the string first.
        func copy(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
            guard isPlain(bytes) else { return false }
            output.append(contentsOf: bytes)
            return true
        }
        var text = text
        let copied = text.utf8.withContiguousStorageIfAvailable(copy) ?? text.withUTF8(copy)
        if !copied { appendEscaped(text, into: &output) }
        output.append(UInt8(ascii: "\""))
    }

    /// Whether every byte is printable ASCII other than a quote or a backslash (`json.dumps` writes it as it is).
    /// Eight bytes at a time while eight remain: the word tests flag every such byte (and at worst one that is not,
    /// which only sends the string the slow way), so a string costs a few instructions per eight bytes.
    static func isPlain(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var position = 0
        if let base = bytes.baseAddress {
            let ones: UInt64 = 0x0101_0101_0101_0101
            let highs: UInt64 = 0x8080_8080_8080_8080
            @inline(__always) func hasZero(_ word: UInt64) -> UInt64 { (word &- ones) & ~word }
            while position + 8 <= bytes.count {
                let word = UInt64(littleEndian: UnsafeRawPointer(base + position).loadUnaligned(as: UInt64.self))
                let flagged =
                    word | (word &- ones &* 0x20) & ~word | hasZero(word ^ (ones &* 0x22)) | hasZero(word ^ (ones &* 0x5C))
                    | hasZero(word ^ (ones &* 0x7F))
                if flagged & highs != 0 { return false }
                position += 8
            }
        }
        while position < bytes.count {
            let byte = bytes[position]
            if byte < 0x20 || byte >= 0x7F || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { return false }
            position += 1
        }
        return true
    }

    private static func appendEscaped(_ text: String, into output: inout [UInt8]) {
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x22: output.append(contentsOf: "\\\"".utf8)
            case 0x5C: output.append(contentsOf: "\\\\".utf8)
            case 0x0A: output.append(contentsOf: "\\n".utf8)
            case 0x0D: output.append(contentsOf: "\\r".utf8)
            case 0x09: output.append(contentsOf: "\\t".utf8)
            case 0x08: output.append(contentsOf: "\\b".utf8)
            case 0x0C: output.append(contentsOf: "\\f".utf8)
            case 0x20..<0x7F: output.append(UInt8(scalar.value))
            case 0x10000...:
                let offset = scalar.value - 0x10000
                appendUnicodeEscape(UInt16(0xD800 + (offset >> 10)), into: &output)
                appendUnicodeEscape(UInt16(0xDC00 + (offset & 0x3FF)), into: &output)
            default:
                appendUnicodeEscape(UInt16(scalar.value), into: &output)
            }
        }
    }

    private static func appendUnicodeEscape(_ unit: UInt16, into output: inout [UInt8]) {
        output.append(UInt8(ascii: "\\"))
        output.append(UInt8(ascii: "u"))
        output.append(hexDigits[Int(unit >> 12 & 0xF)])
        output.append(hexDigits[Int(unit >> 8 & 0xF)])
        output.append(hexDigits[Int(unit >> 4 & 0xF)])
        output.append(hexDigits[Int(unit & 0xF)])
    }
}
