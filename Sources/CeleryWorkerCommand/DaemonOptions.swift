import ArgumentParser
import CeleryWorker
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The daemonization options of Celery's `worker` and `beat` commands (`CeleryDaemonCommand`, with Celery's global
/// `--workdir`), which ``SwiftCeleryWorker/main()`` acts on right after parsing, before any other thread exists.
struct DaemonOptions: ParsableArguments {
    @Option(
        name: .customLong("uid"),
        help: "Started as root, drop privileges to this user (a name or a number) before anything else, as Celery's --uid.")
    var uid: String?

    @Option(name: .customLong("gid"), help: "Started as root, drop privileges to this group (a name or a number), as Celery's --gid.")
    var gid: String?

    @Flag(
        name: [.customShort("D"), .customLong("detach")],
        help: "Run in the background (a session of its own, standard input and output on /dev/null), as Celery's --detach.")
    var detach = false

    @Option(name: .customLong("umask"), help: "The file mode creation mask, octal when it starts with 0 (027), as Celery's --umask.")
    var umask: String?

    @Option(name: .customLong("workdir"), help: "Change to this directory before anything else (relative paths then start there).")
    var workdir: String?

    @Option(
        name: .customLong("executable"),
        help: "With --detach, the program the background process runs (default: this one), as Celery's --executable.")
    var executable: String?

    /// Checks the mask and changes to `--workdir`: called first by each command's `validate`, since Celery's
    /// `--workdir` is eager (the config file and every relative path are then read from there). A pool child and a
    /// detached process start there already.
    func prepare() throws {
        if let umask, DaemonSettings.umask(parsing: umask) == nil {
            throw ValidationError("--umask must be a mask from 0 to 0777 (octal when it starts with 0), got '\(umask)'.")
        }
        if let workdir, !CeleryWorkerService.isPoolChild, !Daemon.isDetached, chdir(workdir) != 0 {
            throw ValidationError("--workdir \(workdir): \(String(cString: strerror(errno))).")
        }
    }

    /// These options over the command's settings (`worker_uid`, `beat_umask`, …), with the log and pid files as the
    /// command resolves them.
    func plan(settings: DaemonSettings, logfile: String?, pidfile: String?) -> Daemon.Plan {
        Daemon.Plan(
            uid: uid ?? settings.uid, gid: gid ?? settings.gid,
            umask: (umask ?? settings.umask).flatMap(DaemonSettings.umask(parsing:)), detach: detach, logfile: logfile,
            pidfile: pidfile, executable: executable ?? settings.executable)
    }
}

/// A command that runs as Celery's daemon commands run: ``SwiftCeleryWorker/main()`` carries out its plan right
/// after parsing.
protocol DaemonCommand: SendableMetatype {
    /// Its options and settings, resolved as the command resolves them.
    func daemonPlan() throws -> Daemon.Plan
}
