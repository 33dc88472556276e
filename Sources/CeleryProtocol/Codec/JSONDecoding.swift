import OrderedCollections

/// Parses JSON text into ``CeleryValue`` the way Python's `json.loads` with kombu's object hook reads it.
///
/// Numbers without a fraction or exponent stay integers (signed 64-bit, then unsigned 64-bit); anything else is a
/// float. `NaN`, `Infinity` and `-Infinity` are accepted as Python writes them. Objects keep their key order; a
/// repeated key keeps its first position and its last value, as a Python `dict` does. kombu's tagged objects
/// `{"__type__": "bytes" | "base64", "__value__": …}` become ``CeleryValue/bytes(_:)``; other tagged types
/// (datetime, decimal, uuid, …) are kept as the dictionary they are, so they round-trip unchanged.
public enum CeleryJSON {
    /// Decodes one JSON document; trailing white space is allowed, anything else after the value is an error.
    public static func decode(_ bytes: some Collection<UInt8>) throws(CeleryProtocolError) -> CeleryValue {
        let contiguous = Array(bytes)
        return try contiguous.withUnsafeBufferPointer { buffer throws(CeleryProtocolError) in
            var parser = JSONParser(buffer: buffer)
            return try parser.parseDocument()
        }
    }

    /// Decodes one JSON document held in a string.
    public static func decode(_ text: String) throws(CeleryProtocolError) -> CeleryValue {
        try decode(Array(text.utf8))
    }

    /// A protocol 2 body `[args, kwargs, embed]` read straight into its parts, as ``decode(_:)`` followed by
    /// Celery's unpacking reads it, without building the outer list or the embed's dictionary; `nil` for anything
    /// else (any other shape, a tagged value, malformed JSON), which the caller then decodes the general way, with
    /// its errors.
    static func taskBody(_ bytes: [UInt8]) -> CeleryTaskMessage.BodyParts? {
        bytes.withUnsafeBufferPointer { buffer in
            var parser = JSONParser(buffer: buffer)
            return try? parser.parseTaskBody()
        }
    }
}

struct JSONParser {
    let buffer: UnsafeBufferPointer<UInt8>
    var index = 0
    var depth = 0
    static let maximumDepth = 512
    init(buffer: UnsafeBufferPointer<UInt8>, at index: Int = 0) {
        self.buffer = buffer
        self.index = index
    }

    mutating func parseDocument() throws(CeleryProtocolError) -> CeleryValue {
        skipWhitespace()
        let value = try parseValue()
        skipWhitespace()
        guard index == buffer.count else {
            throw error("unexpected data after the JSON value")
        }
        return value
    }

    private func error(_ message: String) -> CeleryProtocolError {
        CeleryProtocolError(code: .invalidJSON, message: "\(message) at byte \(index)")
    }

    private mutating func skipWhitespace() {
        while index < buffer.count, Self.isWhitespace(buffer[index]) { index += 1 }
    }

    /// From `start`, the index of the first quote, backslash or control character (the end of the buffer when there
    /// is none): where a string's plain run ends. `bytes` gets the OR of every byte before it (its high bit says
    /// whether the run holds non-ASCII). Reads eight bytes at a time while eight remain, so a string costs a few
    /// instructions per eight bytes instead of a few per byte.
    @inline(__always)
    private func plainRun(from start: Int, bytes: inout UInt8) -> Int {
        var position = start
        var seen: UInt64 = 0
        if let base = buffer.baseAddress {
            let ones: UInt64 = 0x0101_0101_0101_0101
            let highs: UInt64 = 0x8080_8080_8080_8080
            while position + 8 <= buffer.count {
                let word = UInt64(littleEndian: UnsafeRawPointer(base + position).loadUnaligned(as: UInt64.self))
                // The classic "has a zero byte" and "has a byte below n" tests: the lowest flagged byte is exact
                // (a borrow only flags bytes above it).
                let quote = word ^ (ones &* 0x22)
                let backslash = word ^ (ones &* 0x5C)
                let hits =
                    ((quote &- ones) & ~quote | (backslash &- ones) & ~backslash | (word &- ones &* 0x20) & ~word)
                    & highs
                if hits != 0 {
                    let offset = hits.trailingZeroBitCount / 8
                    if offset > 0 { seen |= word & (UInt64.max >> (64 - 8 * offset)) }
                    position += offset
                    bytes |= Self.fold(seen)
                    return position
                }
                seen |= word
                position += 8
            }
        }
        bytes |= Self.fold(seen)
        while position < buffer.count {
            let byte = buffer[position]
            if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") || byte < 0x20 { break }
            bytes |= byte
            position += 1
        }
        return position
    }

    /// The OR of a word's eight bytes.
    @inline(__always)
    private static func fold(_ word: UInt64) -> UInt8 {
        var folded = word | word >> 32
        folded |= folded >> 16
        folded |= folded >> 8
        return UInt8(truncatingIfNeeded: folded)
    }

    /// ``expectLiteral(_:)`` for `null`, `true` and `false`, the literals a message is full of: their first four
    /// bytes compared as one little-endian `word`, then the fifth (`then`) if any.
    @inline(__always)
    private mutating func expectLiteral(_ literal: StaticString, word: UInt32, then last: UInt8? = nil) throws(CeleryProtocolError) {
        let count = last == nil ? 4 : 5
        if index + count <= buffer.count, let base = buffer.baseAddress,
            UInt32(littleEndian: UnsafeRawPointer(base + index).loadUnaligned(as: UInt32.self)) == word,
            last.map({ base[index + 4] == $0 }) ?? true
        {
            index += count
            return
        }
        try expectLiteral(literal)  // not that literal: the same error as ever
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(CeleryProtocolError) {
        let count = literal.utf8CodeUnitCount
        guard index + count <= buffer.count else { throw error("truncated literal") }
        let start = literal.utf8Start
        for offset in 0..<count where buffer[index + offset] != start[offset] {
            throw error("invalid literal")
        }
        index += count
    }

    /// The value at the index.
    mutating func parseValue() throws(CeleryProtocolError) -> CeleryValue {
        guard index < buffer.count else { throw error("unexpected end of JSON") }
        switch buffer[index] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"):
            try expectLiteral("true", word: 0x6575_7274)
            return .bool(true)
        case UInt8(ascii: "f"):
            try expectLiteral("false", word: 0x736C_6166, then: UInt8(ascii: "e"))
            return .bool(false)
        case UInt8(ascii: "n"):
            try expectLiteral("null", word: 0x6C6C_756E)
            return .null
        case UInt8(ascii: "N"):
            try expectLiteral("NaN")
            return .double(.nan)
        case UInt8(ascii: "I"):
            try expectLiteral("Infinity")
            return .double(.infinity)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try parseNumber()
        default:
            throw error("unexpected character")
        }
    }

    /// See ``CeleryJSON/taskBody(_:)``. Throws, or returns `nil`, where that returns `nil`.
    mutating func parseTaskBody() throws(CeleryProtocolError) -> CeleryTaskMessage.BodyParts? {
        skipWhitespace()
        guard index < buffer.count, buffer[index] == UInt8(ascii: "[") else { return nil }
        try enter()
        index += 1
        skipWhitespace()
        guard case .array(let args) = try parseValue(), try !endOfMember(closing: UInt8(ascii: "]")) else { return nil }
        skipWhitespace()
        guard case .object(let kwargs) = try parseValue(), try !endOfMember(closing: UInt8(ascii: "]")) else { return nil }
        skipWhitespace()
        guard let embed = try parseEmbed(), try endOfMember(closing: UInt8(ascii: "]")) else { return nil }
        depth -= 1
        skipWhitespace()
        guard index == buffer.count else { return nil }
        return (args, kwargs, embed)
    }

    /// The embed (`null` or an object) read into its four members, the others checked and dropped as Celery drops
    /// them; `nil` for anything else and for an object of two members (it may be one of kombu's tagged values).
    private mutating func parseEmbed() throws(CeleryProtocolError) -> CeleryTaskMessage.Embed? {
        guard index < buffer.count else { return nil }
        if buffer[index] == UInt8(ascii: "n") {
            try expectLiteral("null", word: 0x6C6C_756E)
            return CeleryTaskMessage.Embed()
        }
        guard buffer[index] == UInt8(ascii: "{") else { return nil }
        try enter()
        defer { depth -= 1 }
        index += 1
        skipWhitespace()
        var embed = CeleryTaskMessage.Embed()
        if index < buffer.count, buffer[index] == UInt8(ascii: "}") {
            index += 1
            return embed
        }
        var members = 0
        var next = 0
        while true {
            let field = try nextKey(in: CeleryTaskMessage.Embed.layout, expected: &next)
            let value = try parseValue()
            if let field { embed.set(field, value) }
            members += 1
            if try endOfMember(closing: UInt8(ascii: "}")) { break }
        }
        return members == 2 ? nil : embed
    }

    /// Reads the next member's key, leaving the index at its value, and returns the field it names in `layout`.
    /// The key expected next (`layout.entries[next]`) is compared with the text first, as it is spelled there;
    /// any other key is read and searched for, and the expectation moves on from it.
    @inline(__always)
    private mutating func nextKey<Field>(in layout: KeyLayout<Field>, expected next: inout Int) throws(CeleryProtocolError) -> Field? {
        skipWhitespace()
        if next < layout.entries.count, skipSpelling(layout.entries[next].spelling) {
            let field = layout.entries[next].field
            next += 1
            skipWhitespace()
            return field
        }
        let position: Int?
        if let key = parseASCIIKey() {
            position = layout.position(of: UnsafeBufferPointer(rebasing: buffer[key]))
        } else {
            var key = try parseKey()
            position = key.withUTF8 { layout.position(of: $0) }
        }
        guard let position else { return nil }
        next = position + 1
        return layout.entries[position].field
    }

    /// Moves past `spelling` when the text at the index is exactly that; compared a word at a time (the last word
    /// overlapping the one before it).
    @inline(__always)
    private mutating func skipSpelling(_ spelling: StaticString) -> Bool {
        let count = spelling.utf8CodeUnitCount
        guard count >= 4, index + count <= buffer.count, let base = buffer.baseAddress else { return false }
        let text = UnsafeRawPointer(base + index)
        let expected = UnsafeRawPointer(spelling.utf8Start)
        if count >= 8 {
            var offset = 0
            while offset + 8 < count {
                guard
                    text.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                        == expected.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                else { return false }
                offset += 8
            }
            guard
                text.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)
                    == expected.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)
            else { return false }
        } else {
            guard text.loadUnaligned(as: UInt32.self) == expected.loadUnaligned(as: UInt32.self),
                text.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)
                    == expected.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)
            else { return false }
        }
        index += count
        return true
    }

    private mutating func enter() throws(CeleryProtocolError) {
        depth += 1
        if depth > Self.maximumDepth { throw error("JSON nested too deeply") }
    }

    private mutating func parseArray() throws(CeleryProtocolError) -> CeleryValue {
        try enter()
        defer { depth -= 1 }
        index += 1
        skipWhitespace()
        if index < buffer.count, buffer[index] == UInt8(ascii: "]") {
            index += 1
            return .array([])
        }
        // Room for the few elements of a message's arrays in one allocation; longer ones grow by doubling.
        var elements: [CeleryValue] = []
        elements.reserveCapacity(4)
        while true {
            skipWhitespace()
            elements.append(try parseValue())
            if try endOfMember(closing: UInt8(ascii: "]")) { return .array(elements) }
        }
    }

    /// After a member of an array or object: `true` past the closing bracket, `false` past a comma.
    private mutating func endOfMember(closing: UInt8) throws(CeleryProtocolError) -> Bool {
        skipWhitespace()
        guard index < buffer.count else {
            throw error(closing == UInt8(ascii: "]") ? "unterminated array" : "unterminated object")
        }
        switch buffer[index] {
        case UInt8(ascii: ","):
            index += 1
            return false
        case closing:
            index += 1
            return true
        default: throw error(closing == UInt8(ascii: "]") ? "expected ',' or ']'" : "expected ',' or '}'")
        }
    }

    /// An object's key and the colon after it, leaving the index at its value.
    private mutating func parseKey() throws(CeleryProtocolError) -> String {
        skipWhitespace()
        guard index < buffer.count, buffer[index] == UInt8(ascii: "\"") else {
            throw error("expected a string key")
        }
        let key = try parseString()
        skipWhitespace()
        guard index < buffer.count, buffer[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
        index += 1
        skipWhitespace()
        return key
    }

    private mutating func parseObject() throws(CeleryProtocolError) -> CeleryValue {
        try enter()
        defer { depth -= 1 }
        index += 1
        // Keys and values are collected first and the dictionary is built once: no hashing per insert. A 64-bit
        // filter of cheap key fingerprints (length, first and last byte) finds the rare repeated key without
        // comparing every pair of strings.
        var seen: UInt64 = 0
        var repeated = false
        skipWhitespace()
        if index < buffer.count, buffer[index] == UInt8(ascii: "}") {
            index += 1
            return .object([:])
        }
        var keys: [String] = []
        var values: [CeleryValue] = []
        keys.reserveCapacity(4)
        values.reserveCapacity(4)
        while true {
            let key = try parseKey()
            let bit: UInt64 = 1 << (Self.fingerprint(key) % 64)
            if !repeated, seen & bit != 0 { repeated = keys.contains(key) }
            seen |= bit
            keys.append(key)
            values.append(try parseValue())
            if try endOfMember(closing: UInt8(ascii: "}")) {
                return try Self.untag(Self.dictionary(keys: keys, values: values, repeated: repeated))
            }
        }
    }

    /// A key reduced to its length, first and last byte (of the decoded key: escapes spell the same key).
    private static func fingerprint(_ key: String) -> UInt64 {
        func combine(count: Int, first: UInt8, last: UInt8) -> UInt64 {
            UInt64(count) &* 31 &+ UInt64(first) &* 7 &+ UInt64(last)
        }
        // Parsed strings are native and contiguous; `UTF8View.last` on its own walks indices slowly.
        if let fast = key.utf8.withContiguousStorageIfAvailable({ bytes -> UInt64 in
            guard let first = bytes.first, let last = bytes.last else { return 0 }
            return combine(count: bytes.count, first: first, last: last)
        }) {
            return fast
        }
        let bytes = key.utf8
        guard let first = bytes.first, let last = bytes.last else { return 0 }
        return combine(count: bytes.count, first: first, last: last)
    }

    /// The dictionary Python builds from the pairs: a repeated key keeps its first position and its last value.
    static func dictionary(keys: [String], values: [CeleryValue], repeated: Bool) -> OrderedDictionary<String, CeleryValue> {
        if !repeated { return OrderedDictionary(uncheckedUniqueKeys: keys, values: values) }
        var entries = OrderedDictionary<String, CeleryValue>()
        for (key, value) in zip(keys, values) { entries[key] = value }
        return entries
    }

    /// kombu's object hook: `{"__type__": t, "__value__": v}` is a tagged value.
    static func untag(_ entries: OrderedDictionary<String, CeleryValue>) throws(CeleryProtocolError) -> CeleryValue {
        guard entries.count == 2, case .string(let type)? = entries["__type__"], let value = entries["__value__"] else {
            return .object(entries)
        }
        switch (type, value) {
        case ("bytes", .string(let text)):
            return .bytes(Array(text.utf8))
        case ("base64", .string(let text)):
            guard let bytes = Base64.decode(Array(text.utf8)) else {
                throw CeleryProtocolError(code: .invalidJSON, message: "tagged base64 value is not valid base64")
            }
            return .bytes(bytes)
        default:
            return .object(entries)
        }
    }

    private mutating func parseString() throws(CeleryProtocolError) -> String {
        index += 1
        let start = index
        // Fast path: no escapes.
        var combined: UInt8 = 0
        index = plainRun(from: start, bytes: &combined)
        if index < buffer.count {
            let byte = buffer[index]
            if byte == UInt8(ascii: "\"") {
                let slice = UnsafeBufferPointer(rebasing: buffer[start..<index])
                index += 1
                guard let text = UTF8Text.validating(slice, isASCII: combined < 0x80) else {
                    throw error("string is not valid UTF-8")
                }
                return text
            }
            if byte < 0x20 { throw error("control character in string") }
        }
        var scalars: [UInt8] = Array(buffer[start..<index])
        while index < buffer.count {
            let byte = buffer[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                guard let text = UTF8Text.validating(scalars) else {
                    throw error("string is not valid UTF-8")
                }
                return text
            case UInt8(ascii: "\\"):
                index += 1
                guard index < buffer.count else { throw error("unterminated escape") }
                let escape = buffer[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""): scalars.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): scalars.append(UInt8(ascii: "\\"))
                case UInt8(ascii: "/"): scalars.append(UInt8(ascii: "/"))
                case UInt8(ascii: "b"): scalars.append(0x08)
                case UInt8(ascii: "f"): scalars.append(0x0C)
                case UInt8(ascii: "n"): scalars.append(0x0A)
                case UInt8(ascii: "r"): scalars.append(0x0D)
                case UInt8(ascii: "t"): scalars.append(0x09)
                case UInt8(ascii: "u"):
                    var code = UInt32(try parseHex4())
                    if (0xD800..<0xDC00).contains(code), index + 6 <= buffer.count,
                        buffer[index] == UInt8(ascii: "\\"), buffer[index + 1] == UInt8(ascii: "u")
                    {
                        let saved = index
                        index += 2
                        let low = UInt32(try parseHex4())
                        if (0xDC00..<0xE000).contains(low) {
                            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        } else {
                            index = saved
                        }
                    }
                    // A lone surrogate cannot be held in a Swift string; Python would keep it, we substitute.
                    let scalar = Unicode.Scalar(code) ?? "\u{FFFD}"
                    scalars.append(contentsOf: Array(String(Character(scalar)).utf8))
                default:
                    throw error("invalid escape")
                }
            default:
                if byte < 0x20 { throw error("control character in string") }
                scalars.append(byte)
                index += 1
            }
        }
        throw error("unterminated string")
    }

    private mutating func parseHex4() throws(CeleryProtocolError) -> UInt16 {
        guard index + 4 <= buffer.count else { throw error("truncated \\u escape") }
        var value: UInt16 = 0
        for _ in 0..<4 {
            let byte = buffer[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw error("invalid \\u escape")
            }
            value = value << 4 | UInt16(digit)
            index += 1
        }
        return value
    }

    private mutating func parseNumber() throws(CeleryProtocolError) -> CeleryValue {
        let start = index
        var negative = false
        if buffer[index] == UInt8(ascii: "-") {
            negative = true
            index += 1
            if index < buffer.count, buffer[index] == UInt8(ascii: "I") {
                try expectLiteral("Infinity")
                return .double(-.infinity)
            }
        }
        var isInteger = true
        var magnitude: UInt64 = 0
        var overflow = false
        var digits = 0
        // A leading zero stands alone, as in JSON and Python's parser: what follows it (`01`) is not part of the number.
        let leadingZero = index < buffer.count && buffer[index] == UInt8(ascii: "0")
        while index < buffer.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(buffer[index]), !(leadingZero && digits == 1) {
            let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(buffer[index] - UInt8(ascii: "0")))
            overflow = overflow || o1 || o2
            magnitude = sum
            digits += 1
            index += 1
        }
        guard digits > 0 else { throw error("invalid number") }
        if index < buffer.count, buffer[index] == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            let fractionStart = index
            while index < buffer.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(buffer[index]) { index += 1 }
            guard index > fractionStart else { throw error("invalid number") }
        }
        if index < buffer.count, buffer[index] == UInt8(ascii: "e") || buffer[index] == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if index < buffer.count, buffer[index] == UInt8(ascii: "+") || buffer[index] == UInt8(ascii: "-") {
                index += 1
            }
            let exponentStart = index
            while index < buffer.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(buffer[index]) { index += 1 }
            guard index > exponentStart else { throw error("invalid number") }
        }
        if isInteger {
            if overflow {
                // Beyond 64 bits, kept as its digits, up to Python's `int_max_str_digits` (its words beyond).
                guard digits <= CeleryBigInt.maximumDigits else {
                    throw CeleryProtocolError(
                        code: .unsupportedValue,
                        message: "Exceeds the limit (\(CeleryBigInt.maximumDigits) digits) for integer string conversion: value has "
                            + "\(digits) digits; use sys.set_int_max_str_digits() to increase the limit")
                }
                return .bigInt(CeleryBigInt(checked: String(decoding: buffer[start..<index], as: UTF8.self)))
            }
            if negative {
                if magnitude <= UInt64(Int64.max) { return .int(-Int64(magnitude)) }
                if magnitude == UInt64(Int64.max) + 1 { return .int(Int64.min) }
                return .bigInt(CeleryBigInt(checked: String(decoding: buffer[start..<index], as: UTF8.self)))
            }
            return magnitude <= UInt64(Int64.max) ? .int(Int64(magnitude)) : .uint(magnitude)
        }
        let text = String(decoding: buffer[start..<index], as: UTF8.self)
        guard let value = Double(text) else { throw error("invalid number") }
        return .double(value)
    }
}

extension JSONParser {
    /// A kombu envelope's `body`: the bytes between the quotes when the string has no escapes (the usual base64
    /// text, decoded straight from the message), or the value as parsed.
    enum EnvelopeBody {
        case raw(Range<Int>)
        case value(CeleryValue)
    }

    /// A kombu envelope's `headers` or `properties`: an object read member by member (the members the worker reads,
    /// and the object kept as text in `source`), or any other value as parsed.
    enum ScannedObject<Fields: MessageFields & Sendable> {
        case object(MessageObject<Fields>)
        case other(CeleryValue)
    }

    /// The top-level fields of a kombu envelope. As in a Python `dict`, a repeated key keeps its last value.
    struct EnvelopeFields {
        var body: EnvelopeBody?
        var contentType: CeleryValue?
        var contentEncoding: CeleryValue?
        var headers: ScannedObject<TaskHeaderFields>?
        var properties: ScannedObject<PropertyFields>?
    }

    /// The top-level keys of a kombu envelope that the worker reads.
    enum EnvelopeKey {
        case body, contentType, contentEncoding, headers, properties

        static let layout = KeyLayout<EnvelopeKey>(entries: [
            (#""body": "#, .body), (#""content-encoding": "#, .contentEncoding), (#""content-type": "#, .contentType),
            (#""headers": "#, .headers), (#""properties": "#, .properties),
        ])
    }

    /// Parses a kombu envelope held in `source` (the bytes of ``buffer``), keeping only the fields kombu reads:
    /// neither the top-level object nor the body string is built. Returns `nil` for a valid JSON document that is
    /// not an object.
    mutating func parseEnvelope(source: [UInt8]) throws(CeleryProtocolError) -> EnvelopeFields? {
        var fields = EnvelopeFields()
        let isObject = try forEachTopLevelMember { (parser: inout JSONParser, key) throws(CeleryProtocolError) in
            switch key {
            case .body?: fields.body = try parser.parseBody()
            case .contentType?: fields.contentType = try parser.parseValue()
            case .contentEncoding?: fields.contentEncoding = try parser.parseValue()
            case .headers?: fields.headers = try parser.scanObject(source: source)
            case .properties?: fields.properties = try parser.scanObject(source: source)
            case nil: _ = try parser.parseValue()
            }
        }
        return isObject ? fields : nil
    }

    /// The fields the worker reads of the `properties` of a kombu envelope held in `source`; every other member is
    /// only scanned, never built. `nil` for a valid JSON document that is not an object, or an object whose
    /// `properties` is missing or not an object (the last one counts, as in Python).
    mutating func parseEnvelopeProperties(source: [UInt8]) throws(CeleryProtocolError) -> PropertyFields? {
        var properties: PropertyFields?
        _ = try forEachTopLevelMember { (parser: inout JSONParser, key) throws(CeleryProtocolError) in
            guard key == .properties else { return try parser.skipValue() }
            switch try parser.scanObject(source: source) as ScannedObject<PropertyFields> {
            case .object(let object): properties = object.fields
            case .other(.object(let object)): properties = PropertyFields(object)
            case .other: properties = nil
            }
        }
        return properties
    }

    /// Walks the members of the document's top-level object: `member` gets each key (`nil` for one the envelope
    /// does not name) with the index at its value, and must move past that value. `false` (nothing walked) for a
    /// valid JSON document that is not an object.
    private mutating func forEachTopLevelMember(
        _ member: (inout JSONParser, EnvelopeKey?) throws(CeleryProtocolError) -> Void
    ) throws(CeleryProtocolError) -> Bool {
        skipWhitespace()
        guard index < buffer.count, buffer[index] == UInt8(ascii: "{") else {
            _ = try parseDocument()
            return false
        }
        try enter()
        index += 1
        skipWhitespace()
        if index < buffer.count, buffer[index] == UInt8(ascii: "}") {
            index += 1
        } else {
            var next = 0
            while true {
                try member(&self, try nextKey(in: EnvelopeKey.layout, expected: &next))
                if try endOfMember(closing: UInt8(ascii: "}")) { break }
            }
        }
        depth -= 1
        skipWhitespace()
        guard index == buffer.count else { throw error("unexpected data after the JSON value") }
        return true
    }

    /// Moves past one JSON value, checking its structure as ``parseValue()`` does but building nothing (strings
    /// are not decoded, so their escapes and UTF-8 are not checked).
    private mutating func skipValue() throws(CeleryProtocolError) {
        guard index < buffer.count else { throw error("unexpected end of JSON") }
        switch buffer[index] {
        case UInt8(ascii: "\""): try skipString()
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            let closing = buffer[index] == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
            try enter()
            defer { depth -= 1 }
            index += 1
            skipWhitespace()
            if index < buffer.count, buffer[index] == closing {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                if closing == UInt8(ascii: "}") {
                    guard index < buffer.count, buffer[index] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                    try skipString()
                    skipWhitespace()
                    guard index < buffer.count, buffer[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
                    index += 1
                    skipWhitespace()
                }
                try skipValue()
                if try endOfMember(closing: closing) { return }
            }
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            _ = try parseNumber()
        default:
            _ = try parseValue()  // a literal: nothing to allocate
        }
    }

    private mutating func skipString() throws(CeleryProtocolError) {
        index += 1
        var bytes: UInt8 = 0
        while index < buffer.count {
            index = plainRun(from: index, bytes: &bytes)
            guard index < buffer.count else { break }
            switch buffer[index] {
            case UInt8(ascii: "\\"): index += 2
            case UInt8(ascii: "\""):
                index += 1
                return
            case 0..<0x20: throw error("control character in string")
            default: index += 1
            }
        }
        throw error("unterminated string")
    }

    /// Parses the object at the index as ``parseValue()`` would, checking every member, but builds only the
    /// members `Fields` names and keeps the object as its text in `source`: the dictionary is built later, if
    /// anything reads it.
    /// Members it does not name are checked without being built when they are plain ASCII strings, literals or
    /// integers. Any other value than an object is returned as parsed.
    private mutating func scanObject<Fields>(source: [UInt8]) throws(CeleryProtocolError) -> ScannedObject<Fields> {
        guard index < buffer.count, buffer[index] == UInt8(ascii: "{") else { return .other(try parseValue()) }
        let start = index
        try enter()
        index += 1
        skipWhitespace()
        var fields = Fields()
        var members = 0
        if index < buffer.count, buffer[index] == UInt8(ascii: "}") {
            index += 1
        } else {
            var next = 0
            while true {
                if let field = try nextKey(in: Fields.layout, expected: &next) {
                    try fields.read(field, from: &self)
                } else {
                    try checkValue()
                }
                members += 1
                if try endOfMember(closing: UInt8(ascii: "}")) { break }
            }
        }
        depth -= 1
        if members == 2 {
            // It may be one of kombu's tagged values (`__type__`, `__value__`): read it as parseValue reads it.
            var parser = JSONParser(buffer: buffer, at: start)
            parser.depth = depth
            return .other(try parser.parseValue())
        }
        return .object(MessageObject(text: source, range: start..<index, fields: fields))
    }

    /// `properties.delivery_info`, as ``parseValue()`` would parse it (failing where it fails) and ``DeliveryInfoFields``
    /// would then read it, without building the object: its three members taken, the others checked. An object of
    /// two other members (it may be one of kombu's tagged values) and any other value are parsed and read as they
    /// are.
    mutating func scanDeliveryInfo() throws(CeleryProtocolError) -> DeliveryInfoFields {
        guard index < buffer.count, buffer[index] == UInt8(ascii: "{") else { return DeliveryInfoFields(try parseValue()) }
        let start = index
        try enter()
        index += 1
        skipWhitespace()
        var fields = DeliveryInfoFields()
        var members = 0
        var known = 0
        if index < buffer.count, buffer[index] == UInt8(ascii: "}") {
            index += 1
        } else {
            var next = 0
            while true {
                if let field = try nextKey(in: DeliveryInfoFields.layout, expected: &next) {
                    fields.set(field, try parseValue())
                    known += 1
                } else {
                    try checkValue()
                }
                members += 1
                if try endOfMember(closing: UInt8(ascii: "}")) { break }
            }
        }
        depth -= 1
        if members == 2, known == 0 {
            var parser = JSONParser(buffer: buffer, at: start)
            parser.depth = depth
            return DeliveryInfoFields(try parser.parseValue())
        }
        return fields
    }

    /// Moves past one value, failing where ``parseValue()`` fails. Plain ASCII strings, literals and integers are
    /// checked without building anything; other values are parsed.
    private mutating func checkValue() throws(CeleryProtocolError) {
        guard index < buffer.count, buffer[index] == UInt8(ascii: "\"") else {
            _ = try parseValue()  // literals and integers allocate nothing; the rest is rare here
            return
        }
        var bytes: UInt8 = 0
        let end = plainRun(from: index + 1, bytes: &bytes)
        if end < buffer.count, buffer[end] == UInt8(ascii: "\""), bytes < 0x80 {
            index = end + 1
            return
        }
        _ = try parseString()
    }

    /// The bytes of an object's key and the colon after it, leaving the index at its value, when the key is plain
    /// ASCII with no escapes (it then needs no decoding or checking); otherwise `nil`, with the index unchanged.
    private mutating func parseASCIIKey() -> Range<Int>? {
        var start = index
        while start < buffer.count, Self.isWhitespace(buffer[start]) { start += 1 }
        guard start < buffer.count, buffer[start] == UInt8(ascii: "\"") else { return nil }
        var bytes: UInt8 = 0
        let end = plainRun(from: start + 1, bytes: &bytes)
        guard end < buffer.count, buffer[end] == UInt8(ascii: "\""), bytes < 0x80 else { return nil }
        var colon = end + 1
        while colon < buffer.count, Self.isWhitespace(buffer[colon]) { colon += 1 }
        guard end < buffer.count, colon < buffer.count, buffer[colon] == UInt8(ascii: ":") else { return nil }
        index = colon + 1
        skipWhitespace()
        return start + 1..<end
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\t")
    }

    private mutating func parseBody() throws(CeleryProtocolError) -> EnvelopeBody {
        if index < buffer.count, buffer[index] == UInt8(ascii: "\"") {
            var bytes: UInt8 = 0
            let end = plainRun(from: index + 1, bytes: &bytes)
            if end < buffer.count, buffer[end] == UInt8(ascii: "\"") {
                defer { index = end + 1 }
                return .raw(index + 1..<end)
            }
        }
        return .value(try parseValue())
    }
}
