import ArgumentParser
import CeleryWorker
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Celery's `--detach` (`celery.platforms.detached`): the worker goes on in the background, in a session of its own,
/// with standard input and output on `/dev/null`, and the command that started it exits 0. As Celery does, the
/// background process runs the same command again without `-D` (and without `--uid`, `--gid`, whose change is made
/// already); `--workdir` is left out too, its directory being the one it starts in, and `--executable`, which names the
/// program it runs. Unlike Celery, which finds out
/// in the background, a log file that cannot be written or a pid file held by a running worker stops the command
/// itself, with the error on its standard error.
enum Daemon {
    /// Set in the background process: it never detaches again.
    static let detachedVariable = "SWIFT_CELERY_DETACHED"

    static var isDetached: Bool { ProcessInfo.processInfo.environment[detachedVariable] != nil }

    /// What a daemon command does before it runs: its options over its settings (``DaemonOptions``).
    struct Plan {
        var uid: String?
        var gid: String?
        var umask: mode_t?
        var detach: Bool
        /// The log file, which the detaching checks before it forks.
        var logfile: String?
        /// The pid file, which the detaching checks before it forks.
        var pidfile: String?
        /// The program the background process runs: `--executable`, else this one.
        var executable: String?

        /// Carries the plan out, in Celery's order: the mask, the change of user and group, then the detaching, which
        /// returns only in the background process's place. The background process, started with the mask and as the
        /// user already, does none of it again.
        func carryOut() throws {
            if let umask { Glibc.umask(umask) }
            guard !Daemon.isDetached else { return }
            do {
                try Privileges.drop(user: uid, group: gid)
            } catch {
                StandardStream.error.write("ERROR: \(error)\n")
                throw ExitCode(1)
            }
            if detach { try Daemon.detach(logfile: logfile, pidfile: pidfile, executable: executable) }
        }
    }

    /// The command line of the background process: the same, without the options the detaching carried out.
    static func backgroundArguments(_ arguments: [String]) -> [String] {
        var kept: [String] = []
        var skipNext = false
        for argument in arguments {
            if skipNext {
                skipNext = false
                continue
            }
            if argument == "-D" || argument == "--detach" { continue }
            if ["--uid", "--gid", "--workdir", "--executable"].contains(argument) {
                skipNext = true
                continue
            }
            if ["--uid=", "--gid=", "--workdir=", "--executable="].contains(where: argument.hasPrefix) { continue }
            kept.append(argument)
        }
        return kept
    }

    /// Celery's restart on `SIGHUP` (`_reload_current_worker`): the worker's program again, in this process, with the
    /// options it carried out already left out, as in the background process. Every descriptor but standard input,
    /// output and error is closed by the exec (marked close-on-exec first, so that a thread still running until then
    /// never meets a descriptor closed under it), and the signals the worker trapped are given back their default
    /// action, as at a first start. Returns only when the exec failed, with its error.
    static func restart() -> String {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            guard let descriptor = Int32(entry), descriptor > 2 else { continue }
            let flags = fcntl(descriptor, F_GETFD)
            if flags >= 0 { _ = fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC) }
        }
        for trapped in [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1] { signal(trapped, SIG_DFL) }
        let arguments = backgroundArguments(CommandLine.arguments).map { strdup($0) } + [nil]
        execv("/proc/self/exe", arguments)
        return String(cString: strerror(errno))
    }

    /// Checks what the background process needs, then detaches: returns only in the background process's place,
    /// never (the starting process exits 0; the background one is replaced by the worker).
    static func detach(logfile: String?, pidfile: String?, executable: String?) throws -> Never {
        if let logfile {
            let descriptor = open(logfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o666)
            guard descriptor >= 0 else {
                StandardStream.error.write("ERROR: Cannot open the log file \(logfile): \(String(cString: strerror(errno)))\n")
                throw ExitCode(1)
            }
            close(descriptor)
        }
        if let pidfile { try Pidfile.acquire(pidfile).release() }  // refuses a file a running worker holds
        // Everything the processes below need is made before the first fork: between fork and exec only
        // async-signal-safe calls run.
        setenv(detachedVariable, "1", 1)
        let arguments = backgroundArguments(CommandLine.arguments).map { strdup($0) } + [nil]
        if let executable, access(executable, X_OK) != 0 {
            StandardStream.error.write("ERROR: Cannot run \(executable): \(String(cString: strerror(errno)))\n")
            throw ExitCode(1)
        }
        guard let program = strdup(executable ?? "/proc/self/exe") else { throw ExitCode(1) }
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)  // the exec closes it; its copies on 0, 1, 2 stay
        guard null >= 0 else {
            StandardStream.error.write("ERROR: Cannot open /dev/null: \(String(cString: strerror(errno)))\n")
            throw ExitCode(1)
        }
        switch fork() {
        case -1:
            StandardStream.error.write("ERROR: Cannot detach (fork): \(String(cString: strerror(errno)))\n")
            throw ExitCode(1)
        case 0:
            break
        default:
            _exit(0)
        }
        // The first child: a new session, then a second child that is not its leader (it can never take a terminal).
        setsid()
        let second = fork()
        if second != 0 { _exit(second < 0 ? 1 : 0) }
        dup2(null, 0)
        dup2(null, 1)
        dup2(null, 2)
        execv(program, arguments)
        _exit(1)
    }
}
