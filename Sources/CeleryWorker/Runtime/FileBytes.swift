#if canImport(Glibc)
    import Glibc
#endif

/// A whole file, read or replaced with the system's calls: a failure is the system's reason (`No such file or
/// directory`, `Is a directory`), not Foundation's (`The operation could not be completed. (NSCocoaErrorDomain error
/// 256.)`).
enum FileBytes {
    static func read(_ path: String) -> Result<[UInt8], FileError> {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return .failure(FileError(errno)) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                return .failure(FileError(errno))
            }
            if count == 0 { return .success(bytes) }
            bytes += chunk[..<count]
        }
    }

    /// Replaces the file at `path` with `bytes` whole: written beside it (`PATH.tmp`) and renamed over it, so that a
    /// reader (or a crash) never sees half of it. A failure leaves no `.tmp` file and is the system's reason (`No
    /// space left on device`, `Is a directory`).
    static func replace(_ path: String, with bytes: [UInt8]) -> Result<Void, FileError> {
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)
        guard descriptor >= 0 else { return .failure(FileError(errno)) }
        var failure = bytes.withUnsafeBytes { StandardStream.write($0, to: descriptor) }
        if close(descriptor) != 0, failure == nil { failure = errno }
        if failure == nil, rename(temporary, path) != 0 { failure = errno }
        guard let failure else { return .success(()) }
        unlink(temporary)  // not left beside a path that cannot be written (a directory, say)
        return .failure(FileError(failure))
    }

    /// The system's reason a file could not be read or written.
    struct FileError: Error, CustomStringConvertible {
        let number: Int32
        init(_ number: Int32) { self.number = number }
        var description: String { String(cString: strerror(number)) }
    }
}
