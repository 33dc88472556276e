#if canImport(Glibc)
    import Glibc
#endif

/// Standard output or standard error, written so that a write that cannot be done is dropped rather than ending the
/// program: a reader that is gone (`EPIPE`: a log collector that stopped, `| head -1`) or a full disk (`ENOSPC`).
/// Foundation's `FileHandle.write(_:)` stops the program there (`try!`). Python's logging drops such lines too.
public enum StandardStream: Int32, Sendable {
    case output = 1
    case error = 2

    /// Writes `text` whole, or as much of it as the stream takes.
    public func write(_ text: String) {
        _ = Self.write(text, to: rawValue)
    }

    /// Writes `bytes` whole, or as much of them as the stream takes.
    public func write(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Self.write($0, to: rawValue) }
    }

    /// Writes `text`'s UTF-8 whole to `descriptor`, as a buffer is written (below), without copying it
    /// first (a log line).
    static func write(_ text: String, to descriptor: Int32) -> Int32? {
        var text = text
        return text.withUTF8 { write(UnsafeRawBufferPointer($0), to: descriptor) }
    }

    /// Writes `buffer` whole to `descriptor` (any descriptor: a log file, a pool child's pipe), again where a signal
    /// interrupted the write or it took only a part. Returns `errno` of a write that failed (what was left is not
    /// written), `nil` once everything is written.
    static func write(_ buffer: UnsafeRawBufferPointer, to descriptor: Int32) -> Int32? {
        var written = 0
        while written < buffer.count {
            let count = Glibc.write(descriptor, buffer.baseAddress.map { $0 + written }, buffer.count - written)
            if count < 0 {
                if errno == EINTR { continue }
                return errno
            }
            written += count
        }
        return nil
    }
}
