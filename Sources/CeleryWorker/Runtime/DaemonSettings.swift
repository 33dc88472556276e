import Foundation

/// The daemon options of Celery's `worker` and `beat` commands, as an app's settings give them (Celery 5.4 and later,
/// `celery.bin.base.DaemonOption`): an option missing from the command line is read from the setting named after the
/// command and the option, `worker_pidfile`, `worker_logfile`, `beat_uid` and so on. The command line wins.
public struct DaemonSettings: Sendable, Equatable {
    /// `<command>_logfile`: the log file.
    public var logfile: String?
    /// `<command>_pidfile`: the pid file.
    public var pidfile: String?
    /// `<command>_uid`: the user to become when started as root, a name or a number.
    public var uid: String?
    /// `<command>_gid`: the group to become when started as root, a name or a number.
    public var gid: String?
    /// `<command>_umask`: the file mode creation mask, as ``umask(parsing:)`` reads it.
    public var umask: String?
    /// `<command>_executable`: the program a detaching command runs in the background.
    public var executable: String?

    public init() {}

    /// Celery's `--umask` (`DaemonContext`): octal when it starts with 0, else decimal.
    public static func umask(parsing text: String) -> mode_t? {
        guard let value = Int(text, radix: text.hasPrefix("0") ? 8 : 10), (0...0o777).contains(value) else { return nil }
        return mode_t(value)
    }

    /// The settings of both commands, by name.
    static let settings: [(names: [String], read: CelerySettings.Setter)] =
        settings(of: "worker", \.workerDaemon)
        + settings(of: "beat", \.beatDaemon)

    private static func settings(
        of command: String, _ daemon: any WritableKeyPath<CelerySettings, DaemonSettings> & Sendable
    ) -> [(names: [String], read: CelerySettings.Setter)] {
        [
            (["\(command)_logfile"], { $0[keyPath: daemon].logfile = try $1.string() }),
            (["\(command)_pidfile"], { $0[keyPath: daemon].pidfile = try $1.string() }),
            (["\(command)_uid"], { $0[keyPath: daemon].uid = try $1.nameOrNumber() }),
            (["\(command)_gid"], { $0[keyPath: daemon].gid = try $1.nameOrNumber() }),
            (
                ["\(command)_umask"],
                { settings, field in
                    // A number is the mask itself, as Python's os.umask takes it; text is read as --umask reads it.
                    let number = field.value is Bool ? nil : field.value as? Int
                    let text = try number.map { "0" + String($0, radix: 8) } ?? field.string()
                    guard umask(parsing: text) != nil else {
                        throw field.fail("a mask from 0 to 0777 (a string, octal when it starts with 0, or a number)")
                    }
                    settings[keyPath: daemon].umask = text
                }
            ),
            (["\(command)_executable"], { $0[keyPath: daemon].executable = try $1.string() }),
        ]
    }
}

extension CelerySettings.Field {
    /// A user or group: a name, or a number (Python's config may give either).
    func nameOrNumber() throws(CeleryWorkerError) -> String {
        if !(value is Bool), let number = value as? Int { return String(number) }
        guard let text = value as? String, !text.isEmpty else { throw fail("a name or a number") }
        return text
    }
}
