/// A command's arguments written straight in Redis's protocol (RESP), each as `$<length>\r\n<bytes>\r\n`, into one
/// buffer: no array per argument. The scripts the worker runs for every batch (fetching, settling) build their
/// arguments this way; ``RedisConnection/evaluate(_:keyCount:arguments:)`` puts the command's head in front.
struct RESPArguments: Sendable {
    /// The arguments as written so far.
    private(set) var bytes: [UInt8] = []
    /// How many arguments were written.
    private(set) var count = 0
    /// Where a value is written before its length is known (see ``append(writing:)``), kept for the next one.
    private var scratch: [UInt8] = []

    init(capacity: Int = 256) {
        bytes.reserveCapacity(capacity)
    }

    mutating func append(_ argument: UnsafeRawBufferPointer) {
        Self.writeArgument(argument, into: &bytes)
        count += 1
    }

    mutating func append(_ argument: [UInt8]) {
        argument.withUnsafeBytes { append($0) }
    }

    mutating func append(_ text: String) {
        Self.writeArgument(text, into: &bytes)
        count += 1
    }

    mutating func append(_ number: Int) {
        // The digits written in place, with their length line: no string made for them.
        Self.withDigits(of: number) { digits in
            Self.writeLine(UInt8(ascii: "$"), digits.count, into: &bytes)
            bytes.append(contentsOf: UnsafeRawBufferPointer(digits))
            bytes.append(0x0D)
            bytes.append(0x0A)
        }
        count += 1
    }

    mutating func append(_ number: Double) {
        append(number.description)
    }

    /// One argument spelled by three texts one after the other (a key with its prefixes), without joining them.
    mutating func append(_ first: String, _ second: String, _ third: String) {
        Self.writeLine(UInt8(ascii: "$"), first.utf8.count + second.utf8.count + third.utf8.count, into: &bytes)
        func write(_ part: String) {
            Self.withUTF8(part) { bytes.append(contentsOf: $0) }
        }
        write(first)
        write(second)
        write(third)
        bytes.append(0x0D)
        bytes.append(0x0A)
        count += 1
    }

    /// One argument that `write` produces (appending to the array it is given, which starts empty); none when it
    /// fails.
    mutating func append<Failure: Error>(writing write: (inout [UInt8]) throws(Failure) -> Void) throws(Failure) {
        // Taken out while written and appended: `append` changes `self`, which must not hold it meanwhile.
        var written = scratch
        scratch = []
        written.removeAll(keepingCapacity: true)
        // Room for a task's result document at first: grown from nothing, it was reallocated five times.
        if written.capacity == 0 { written.reserveCapacity(512) }
        do {
            try write(&written)
        } catch {
            scratch = written
            throw error
        }
        written.withUnsafeBytes { append($0) }
        scratch = written
    }

    /// `$<length>\r\n<bytes>\r\n`.
    static func writeArgument(_ argument: UnsafeRawBufferPointer, into bytes: inout [UInt8]) {
        writeLine(UInt8(ascii: "$"), argument.count, into: &bytes)
        bytes.append(contentsOf: argument)
        bytes.append(0x0D)
        bytes.append(0x0A)
    }

    static func writeArgument(_ text: String, into bytes: inout [UInt8]) {
        withUTF8(text) { writeArgument(UnsafeRawBufferPointer($0), into: &bytes) }
    }

    /// `body` with the text's UTF-8 bytes: in place for a native string, without the copy (a retain and a release) of
    /// `withUTF8`, which is mutating; a bridged string is copied first.
    private static func withUTF8(_ text: String, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
        if text.utf8.withContiguousStorageIfAvailable(body) != nil { return }
        var text = text
        text.withUTF8(body)
    }

    /// `<marker><number>\r\n`: a RESP line header (`*` for a command's argument count, `$` for a length), a
    /// non-negative number; appended in one go.
    static func writeLine(_ marker: UInt8, _ number: Int, into bytes: inout [UInt8]) {
        // Most lines are an argument count or a key's length: one or two digits, appended byte by byte (the
        // general append of a few bytes costs more than the line).
        if number >= 0 && number < 100 {
            bytes.append(marker)
            if number >= 10 { bytes.append(UInt8(ascii: "0") + UInt8(number / 10)) }
            bytes.append(UInt8(ascii: "0") + UInt8(number % 10))
            bytes.append(0x0D)
            bytes.append(0x0A)
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { line in
            line[line.count - 2] = 0x0D
            line[line.count - 1] = 0x0A
            var start = writeDigits(of: max(number, 0), into: line, endingAt: line.count - 2)
            start -= 1
            line[start] = marker
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: line[start...]))
        }
    }

    /// The decimal digits of `number` (with its sign), as Python and Redis write it.
    static func withDigits<Result>(of number: Int, _ body: (UnsafeBufferPointer<UInt8>) -> Result) -> Result {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { digits in
            let start = writeDigits(of: number, into: digits, endingAt: digits.count)
            return body(UnsafeBufferPointer(rebasing: digits[start...]))
        }
    }

    /// Writes `number`'s decimal digits (and sign) so that they end just before `end`; returns where they start.
    private static func writeDigits(of number: Int, into buffer: UnsafeMutableBufferPointer<UInt8>, endingAt end: Int) -> Int {
        var rest = number.magnitude
        var start = end
        repeat {
            start -= 1
            buffer[start] = UInt8(ascii: "0") + UInt8(rest % 10)
            rest /= 10
        } while rest > 0
        if number < 0 {
            start -= 1
            buffer[start] = UInt8(ascii: "-")
        }
        return start
    }
}
