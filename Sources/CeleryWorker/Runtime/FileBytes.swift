#if canImport(Glibc)
    import Glibc
#endif

/// A whole file, read with the system's calls: a failure is the system's reason (`No such file or directory`, `Is a
/// directory`), not Foundation's (`The operation could not be completed. (NSCocoaErrorDomain error 256.)`).
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

    /// The system's reason a file could not be read.
    struct FileError: Error, CustomStringConvertible {
        let number: Int32
        init(_ number: Int32) { self.number = number }
        var description: String { String(cString: strerror(number)) }
    }
}
