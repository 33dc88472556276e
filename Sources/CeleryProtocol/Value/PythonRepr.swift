/// Python's `repr()` of a value, as Celery shows arguments and results in logs and events.
public enum PythonRepr {
    /// The `repr` of a value: `'text'`, `5`, `1.5`, `None`, `True`, `[1, 2]`, `{'a': 1}`, `b'\x00'`.
    public static func repr(_ value: CeleryValue) -> String {
        var output = ""
        append(value, to: &output)
        return output
    }

    /// Python's `str()`: a string as it is, anything else as its `repr`.
    public static func str(_ value: CeleryValue) -> String {
        if case .string(let text) = value { return text }
        return repr(value)
    }

    /// The `repr` of a tuple of arguments: `()`, `('a',)`, `(2, 3)`.
    public static func tuple(_ values: [CeleryValue]) -> String {
        var output = "("
        for (index, value) in values.enumerated() {
            if index > 0 { output += ", " }
            append(value, to: &output)
        }
        output += values.count == 1 ? ",)" : ")"
        return output
    }

    /// Shortens a repr to at most `limit` characters the way Celery's `saferepr` does (`...` at the end).
    public static func truncated(_ text: String, limit: Int = 1024) -> String {
        guard text.count > limit else { return text }
        return String(text.prefix(limit)) + "..."
    }

    private static func append(_ value: CeleryValue, to output: inout String) {
        switch value {
        case .null: output += "None"
        case .bool(let flag): output += flag ? "True" : "False"
        case .int(let number): output += String(number)
        case .uint(let number): output += String(number)
        case .bigInt(let number): output += number.description
        case .double(let number):
            if number.isNaN {
                output += "nan"
            } else if number.isInfinite {
                output += number < 0 ? "-inf" : "inf"
            } else {
                output += finite(number)
            }
        case .string(let text): appendString(text, to: &output)
        case .bytes(let bytes): appendBytes(bytes, to: &output)
        case .array(let elements):
            output += "["
            for (index, element) in elements.enumerated() {
                if index > 0 { output += ", " }
                append(element, to: &output)
            }
            output += "]"
        case .object(let entries):
            output += "{"
            var first = true
            for (key, element) in entries {
                if !first { output += ", " }
                first = false
                appendString(key, to: &output)
                output += ": "
                append(element, to: &output)
            }
            output += "}"
        }
    }

    /// Python's `repr` of a finite float: Swift's shortest round-trip digits, in full below 1e16 as Python writes
    /// them (Swift's own form turns to an exponent from 2^53 on: `9.007199254740994e+15` is Python's
    /// `9007199254740994.0`).
    @inline(__always)
    static func finite(_ number: Double) -> String {
        let magnitude = abs(number)
        // Every double from 2^53 on is a whole number.
        guard magnitude >= 0x1p53, magnitude < 1e16 else { return number.description }
        return String(Int64(number)) + ".0"
    }

    private static func hex(_ value: UInt32, width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    private static func appendString(_ text: String, to output: inout String) {
        let quote: Character = text.contains("'") && !text.contains("\"") ? "\"" : "'"
        output.append(quote)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            case "'" where quote == "'": output += "\\'"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    output += "\\x" + hex(scalar.value, width: 2)
                } else if scalar.value >= 0x80 && !isPrintable(scalar) {
                    if scalar.value <= 0xFF {
                        output += "\\x" + hex(scalar.value, width: 2)
                    } else if scalar.value <= 0xFFFF {
                        output += "\\u" + hex(scalar.value, width: 4)
                    } else {
                        output += "\\U" + hex(scalar.value, width: 8)
                    }
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        output.append(quote)
    }

    /// Python treats letters, marks, numbers, punctuation, symbols and the plain space as printable.
    private static func isPrintable(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator,
            .spaceSeparator:
            return false
        default:
            return true
        }
    }

    private static func appendBytes(_ bytes: [UInt8], to output: inout String) {
        let quote: Character = bytes.contains(0x27) && !bytes.contains(0x22) ? "\"" : "'"
        output += "b"
        output.append(quote)
        for byte in bytes {
            switch byte {
            case 0x5C: output += "\\\\"
            case 0x0A: output += "\\n"
            case 0x0D: output += "\\r"
            case 0x09: output += "\\t"
            case 0x27 where quote == "'": output += "\\'"
            case 0x20..<0x7F: output.unicodeScalars.append(Unicode.Scalar(byte))
            default: output += "\\x" + hex(UInt32(byte), width: 2)
            }
        }
        output.append(quote)
    }
}
