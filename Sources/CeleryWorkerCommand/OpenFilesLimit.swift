import CeleryWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The limit on open files (`RLIMIT_NOFILE`, `ulimit -n`) the worker starts with.
///
/// The worker holds about two dozen descriptors whatever its pool (its Redis connections, the event loop's and
/// Dispatch's), and two more for each process-pool child. Short of them, its connections fail and reconnect without
/// end, and Dispatch stops the process (`SIGILL`) when it cannot read its own thread statistics. Python's worker
/// stops with `Too many open files. Aborting...` once one of its calls fails for want of them. So, as Go programs
/// do, the worker first raises its soft limit to the hard one; below what it needs even then, it does not start.
enum OpenFilesLimit {
    /// The descriptors a worker of `configuration` needs, with room to spare: 32, and 2 for each process-pool child
    /// (a worker held 25 with 2 children and 37 with 8).
    static func needed(by configuration: WorkerConfiguration) -> Int {
        guard configuration.pool == .process else { return 32 }
        return 32 + 2 * max(configuration.concurrency, configuration.autoscale?.max ?? 0)
    }

    /// Raises the soft limit to the hard one; the limit in effect then, or `nil` when it cannot be read.
    static func raised() -> Int? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        if limit.rlim_cur < limit.rlim_max {
            var wanted = limit
            wanted.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &wanted) == 0 { limit = wanted }
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// Why the worker cannot start with `limit` open files, or `nil` when they are enough.
    static func refusal(limit: Int, needed: Int) -> String? {
        guard limit < needed else { return nil }
        return "Too many open files. Aborting... The limit on open files (ulimit -n) is \(limit), and this worker needs "
            + "\(needed) at the least: raise it (Python's worker stops the same way, with fewer than it needs)."
    }
}
