import Foundation
import NIOPosix

/// Facts about the machine the worker runs on.
enum Host {
    /// The host name, as Python's `socket.gethostname()`.
    static var name: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map(UInt8.init(bitPattern:)), as: UTF8.self)
    }

    /// This process id.
    static var pid: Int32 { getpid() }

    /// This process's resident memory in bytes, as psutil's `memory_info().rss` reads it (`/proc/self/statm`).
    static func residentBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
        return pages * sysconf(Int32(_SC_PAGESIZE))
    }
}
