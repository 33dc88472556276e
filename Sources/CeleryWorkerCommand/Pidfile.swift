import ArgumentParser
import CeleryWorker
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Celery's pid lock (`--pidfile`, `celery.platforms.Pidfile`): a file that holds the worker's pid and a newline,
/// created exclusively at start and removed at exit. A file left by a process that no longer runs (or that cannot be
/// read) is removed first, with Celery's words; one whose process still runs stops the worker with Celery's message
/// and exit status (73, `EX_CANTCREAT`).
struct Pidfile {
    let path: String
    let pid: Int32

    static func acquire(_ path: String) throws -> Pidfile {
        let pid = getpid()
        if FileManager.default.fileExists(atPath: path), !removeIfStale(path, ownPid: pid) {
            throw alreadyRunning(path)
        }
        let content = Array("\(pid)\n".utf8)
        // Celery creates the file with `O_EXCL` and then writes the pid, so for a moment it is there and empty; a second
        // worker starting then calls it broken and removes the first one's lock. Here the pid is written to a file of
        // this process's own and linked into place, which, like `O_EXCL`, fails if the path exists: a reader finds the
        // pid or no file. A file system without hard links gets Celery's way.
        let staging = "\(path).\(pid).tmp"
        unlink(staging)
        try writeExclusively(staging, content, reportedAs: path)
        defer { unlink(staging) }
        if link(staging, path) != 0 {
            if errno == EEXIST { throw alreadyRunning(path) }  // another worker won a race for it since the check
            guard errno == EPERM || errno == EOPNOTSUPP || errno == EXDEV else { throw failure(path) }
            try writeExclusively(path, content, reportedAs: path)
        }
        return Pidfile(path: path, pid: pid)
    }

    private static func writeExclusively(_ file: String, _ content: [UInt8], reportedAs path: String) throws {
        let descriptor = open(file, O_CREAT | O_EXCL | O_WRONLY, 0o644)
        guard descriptor >= 0 else { throw failure(path) }
        defer { close(descriptor) }
        guard write(descriptor, content, content.count) == content.count, fsync(descriptor) == 0 else { throw failure(path) }
    }

    /// Removes the file if it still holds this process's pid.
    func release() {
        guard Self.readPid(path) == pid else { return }
        unlink(path)
    }

    private static func alreadyRunning(_ path: String) -> ExitCode {
        let holder = (try? String(contentsOfFile: path, encoding: .utf8)).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        StandardStream.error.write("ERROR: Pidfile (\(path)) already exists.\nSeems we're already running? (pid: \(holder ?? "?"))\n")
        return ExitCode(73)
    }

    private static func failure(_ path: String) -> ExitCode {
        StandardStream.error.write("ERROR: Cannot create pidfile \(path): \(String(cString: strerror(errno)))\n")
        return ExitCode(73)
    }

    /// The pid in the file: one line ending in a newline, as Celery writes it; `nil` when it is not that.
    private static func readPid(_ path: String) -> Int32? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let line = text.split(separator: "\n").first,
            text.hasPrefix(line + "\n")
        else { return nil }
        return Int32(line.trimmingCharacters(in: .whitespaces))
    }

    /// Celery's `remove_if_stale`: whether the file was removed because no running process holds it.
    private static func removeIfStale(_ path: String, ownPid: Int32) -> Bool {
        guard let pid = readPid(path) else {
            StandardStream.error.write("Broken pidfile found - Removing it.\n")
            unlink(path)
            return true
        }
        if pid == 0 || pid == ownPid {
            unlink(path)
            return true
        }
        if kill(pid, 0) != 0, errno == ESRCH || errno == EPERM {
            StandardStream.error.write("Stale pidfile exists - Removing it.\n")
            unlink(path)
            return true
        }
        return false
    }
}
