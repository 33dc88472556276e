/// Strings from UTF-8 bytes on the decoding hot paths.
///
/// The standard library's `String(validating:as:)` is generic over the encoding and is not specialised here: it
/// looked up generic metadata on every call and made up a fifth of the time to decode a task message. This builds
/// the string with the specialised `String(decoding:as:)` and rejects the input if decoding had to repair it.
enum UTF8Text {
    /// The string the bytes spell, or `nil` when they are not valid UTF-8. `isASCII`, when the caller already knows,
    /// saves a pass over the bytes.
    static func validating(_ bytes: UnsafeBufferPointer<UInt8>, isASCII ascii: Bool? = nil) -> String? {
        let text = String(decoding: bytes, as: UTF8.self)
        if ascii ?? isASCII(bytes) { return text }
        // Valid input decodes to the same bytes; anything repaired (with U+FFFD) does not.
        return text.utf8.elementsEqual(bytes) ? text : nil
    }

    /// The string the bytes spell, or `nil` when they are not valid UTF-8.
    static func validating(_ bytes: [UInt8]) -> String? {
        bytes.withUnsafeBufferPointer { validating($0) }
    }

    private static func isASCII(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var combined: UInt8 = 0
        for byte in bytes { combined |= byte }
        return combined < 0x80
    }
}
