/// Redis's replies (RESP2, what Redis speaks unless a client asks for RESP3) read straight from the bytes received.
///
/// hiredis's own reader made a C object for every reply and every element of an array (a `calloc` each, and a
/// `malloc` and a copy for each string), which the worker then converted into ``RedisReply`` values and freed: about
/// a tenth of the worker's instructions per message. This reads the same protocol from hiredis's read buffer into
/// ``RedisReply`` directly. A reply is first scanned, to learn whether all of it has arrived (bulk strings are skipped
/// by their length), and only built once it has, so a large reply that comes in several reads is not built again and
/// again.
enum RESPReader {
    /// What the bytes from a position hold.
    enum Outcome: Equatable {
        /// A whole reply, and where the bytes after it start.
        case reply(RedisReply, next: Int)
        /// Only the start of a reply (or nothing): more bytes must be read.
        case incomplete
        /// Bytes that are not a RESP2 reply, and what is wrong with them.
        case invalid(String)
    }

    /// How deep arrays may nest (hiredis's limit too).
    static let maximumDepth = 7

    /// The reply that starts at `start` in `bytes`.
    static func read(_ bytes: UnsafeRawBufferPointer, at start: Int) -> Outcome {
        switch scan(bytes, at: start, depth: 0) {
        case .incomplete: return .incomplete
        case .invalid(let problem): return .invalid(problem)
        case .end:
            var position = start
            let reply = build(bytes, at: &position)
            return .reply(reply, next: position)
        }
    }

    private enum Scan {
        case end(Int)
        case incomplete
        case invalid(String)
    }

    /// Where the reply at `position` ends, if all of it is there, and whether it is well formed.
    private static func scan(_ bytes: UnsafeRawBufferPointer, at position: Int, depth: Int) -> Scan {
        guard position < bytes.count else { return .incomplete }
        guard let (lineEnd, next) = line(bytes, from: position + 1) else { return .incomplete }
        switch bytes[position] {
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            return .end(next)
        case UInt8(ascii: ":"):
            guard number(bytes, position + 1, lineEnd) != nil else { return .invalid("Bad integer value") }
            return .end(next)
        case UInt8(ascii: "$"):
            guard let length = number(bytes, position + 1, lineEnd), length >= -1, length <= 512 * 1024 * 1024 else {
                return .invalid("Bad bulk string length")
            }
            if length == -1 { return .end(next) }
            let end = next + Int(length) + 2
            guard end <= bytes.count else { return .incomplete }
            guard bytes[end - 2] == 0x0D, bytes[end - 1] == 0x0A else { return .invalid("Bulk string not ended by CRLF") }
            return .end(end)
        case UInt8(ascii: "*"):
            guard let count = number(bytes, position + 1, lineEnd), count >= -1, count <= Int64(Int32.max) else {
                return .invalid("Bad multi-bulk length")
            }
            if count <= 0 { return .end(next) }
            guard depth < maximumDepth else { return .invalid("No support for nested multi bulk replies with depth > 7") }
            var element = next
            for _ in 0..<count {
                switch scan(bytes, at: element, depth: depth + 1) {
                case .end(let end): element = end
                case let other: return other
                }
            }
            return .end(element)
        case let type:
            return .invalid("Protocol error, got \(String(reflecting: Character(Unicode.Scalar(type)))) as reply type byte")
        }
    }

    /// The reply at `position`, which ``scan(_:at:depth:)`` found whole and well formed; moves `position` past it.
    private static func build(_ bytes: UnsafeRawBufferPointer, at position: inout Int) -> RedisReply {
        let start = position
        let type = bytes[start]
        guard let (lineEnd, next) = line(bytes, from: start + 1) else { return .null }  // scanned: never
        let value = number(bytes, start + 1, lineEnd)
        func text() -> String { String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(start + 1)..<lineEnd]), as: UTF8.self) }
        switch type {
        case UInt8(ascii: "+"):
            let reply = RedisReply.status(text())
            position = next
            return reply
        case UInt8(ascii: "-"):
            let reply = RedisReply.error(text())
            position = next
            return reply
        case UInt8(ascii: ":"):
            position = next
            return .integer(value ?? 0)
        case UInt8(ascii: "$"):
            guard let length = value, length >= 0 else {
                position = next
                return .null
            }
            let end = next + Int(length)
            position = end + 2
            return .string(Array(UnsafeRawBufferPointer(rebasing: bytes[next..<end])))
        default:  // "*"
            position = next
            guard let count = value, count >= 0 else { return .null }
            var elements: [RedisReply] = []
            elements.reserveCapacity(Int(count))
            for _ in 0..<count { elements.append(build(bytes, at: &position)) }
            return .array(elements)
        }
    }

    /// The line that starts at `start`: where its CRLF is, and where the next line starts; `nil` until a CRLF came.
    /// Byte by byte: most lines are a type and a few digits, shorter than the call to `memchr` would cost.
    private static func line(_ bytes: UnsafeRawBufferPointer, from start: Int) -> (end: Int, next: Int)? {
        var position = start
        while position + 1 < bytes.count {
            if bytes[position] == 0x0D, bytes[position + 1] == 0x0A { return (position, position + 2) }
            position += 1
        }
        return nil
    }

    /// The decimal integer (optionally negative) in `bytes[start..<end]`; `nil` when it is not one.
    private static func number(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> Int64? {
        var position = start
        let negative = position < end && bytes[position] == UInt8(ascii: "-")
        if negative { position += 1 }
        guard position < end else { return nil }
        var value: Int64 = 0
        while position < end {
            let digit = bytes[position] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            let (tens, overflowTens) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflowSum) = tens.addingReportingOverflow(Int64(digit))
            guard !overflowTens, !overflowSum else { return nil }
            value = sum
            position += 1
        }
        return negative ? -value : value
    }
}
