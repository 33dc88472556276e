/// Standard-alphabet, padded base64 as kombu writes message bodies (no line breaks).
enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (value, symbol) in alphabet.enumerated() { table[Int(symbol)] = UInt8(value) }
        return table
    }()

    static func encode(_ bytes: some Collection<UInt8>) -> [UInt8] {
        var output: [UInt8] = []
        append(bytes, into: &output)
        return output
    }

    /// Appends the base64 form of `bytes` to `output`.
    static func append(_ bytes: some Collection<UInt8>, into output: inout [UInt8]) {
        let appended = bytes.withContiguousStorageIfAvailable { append(buffer: $0, into: &output) }
        if appended == nil { Array(bytes).withUnsafeBufferPointer { append(buffer: $0, into: &output) } }
    }

    private static func append(buffer input: UnsafeBufferPointer<UInt8>, into output: inout [UInt8]) {
        let length = (input.count + 2) / 3 * 4
        guard length > 0 else { return }
        let start = output.count
        output.append(contentsOf: repeatElement(0, count: length))
        alphabet.withUnsafeBufferPointer { alphabet in
            output.withUnsafeMutableBufferPointer { whole in
                var out = start
                var index = 0
                while index + 3 <= input.count {
                    let chunk = UInt32(input[index]) << 16 | UInt32(input[index + 1]) << 8 | UInt32(input[index + 2])
                    whole[out] = alphabet[Int(chunk >> 18 & 63)]
                    whole[out + 1] = alphabet[Int(chunk >> 12 & 63)]
                    whole[out + 2] = alphabet[Int(chunk >> 6 & 63)]
                    whole[out + 3] = alphabet[Int(chunk & 63)]
                    index += 3
                    out += 4
                }
                let remaining = input.count - index
                if remaining > 0 {
                    let second = remaining == 2 ? UInt32(input[index + 1]) << 8 : 0
                    let chunk = UInt32(input[index]) << 16 | second
                    whole[out] = alphabet[Int(chunk >> 18 & 63)]
                    whole[out + 1] = alphabet[Int(chunk >> 12 & 63)]
                    whole[out + 2] = remaining == 2 ? alphabet[Int(chunk >> 6 & 63)] : UInt8(ascii: "=")
                    whole[out + 3] = UInt8(ascii: "=")
                }
            }
        }
    }

    /// Decodes padded or unpadded base64; white space is not accepted. Returns `nil` for invalid input.
    static func decode(_ bytes: some Collection<UInt8>) -> [UInt8]? {
        if let decoded = bytes.withContiguousStorageIfAvailable({ decode(buffer: $0) }) { return decoded }
        return Array(bytes).withUnsafeBufferPointer { decode(buffer: $0) }
    }

    private static func decode(buffer input: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        var count = input.count
        while count > 0, input[count - 1] == UInt8(ascii: "=") { count -= 1 }
        guard count % 4 != 1 else { return nil }
        let outputCount = count / 4 * 3 + max(0, count % 4 - 1)
        return decodeTable.withUnsafeBufferPointer { table -> [UInt8]? in
            var valid = true
            let output = [UInt8](unsafeUninitializedCapacity: outputCount) { output, initialized in
                var read = 0
                var written = 0
                // Four symbols make three bytes; 0xFF in the table marks a symbol outside the alphabet.
                while read + 4 <= count {
                    let a = table[Int(input[read])], b = table[Int(input[read + 1])]
                    let c = table[Int(input[read + 2])], d = table[Int(input[read + 3])]
                    if a | b | c | d > 63 {
                        valid = false
                        break
                    }
                    let chunk = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
                    output[written] = UInt8(truncatingIfNeeded: chunk >> 16)
                    output[written + 1] = UInt8(truncatingIfNeeded: chunk >> 8)
                    output[written + 2] = UInt8(truncatingIfNeeded: chunk)
                    written += 3
                    read += 4
                }
                if valid, read < count {
                    var chunk: UInt32 = 0
                    for offset in 0..<(count - read) {
                        let value = table[Int(input[read + offset])]
                        if value > 63 {
                            valid = false
                            break
                        }
                        chunk |= UInt32(value) << (18 - 6 * UInt32(offset))
                    }
                    if valid {
                        for offset in 0..<(count - read - 1) {
                            output[written] = UInt8(truncatingIfNeeded: chunk >> (16 - 8 * UInt32(offset)))
                            written += 1
                        }
                    }
                }
                initialized = valid ? written : 0
            }
            return valid ? output : nil
        }
    }
}
