import CeleryProtocol
import Foundation

/// Celery's start-up banner, with this worker's facts. Passwords in URLs are masked.
public enum Banner {
    private static let art = [
        " --------------", "--- ***** -----", "-- ******* ----", "- *** --- * ---", "- ** ----------",
        "- ** ----------", "- ** ----------", "- ** ----------", "- *** --- * ---", "-- ******* ----",
        "--- ***** -----", " --------------",
    ]

    /// `uname`'s operating system name, release and machine.
    static func host() -> (system: String, release: String, machine: String) {
        var system = utsname()
        uname(&system)
        func text<T>(_ field: inout T) -> String {
            withUnsafeBytes(of: &field) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        }
        return (text(&system.sysname), text(&system.release), text(&system.machine))
    }

    /// The banner text for `configuration` and the registered task names.
    public static func text(configuration: WorkerConfiguration, taskNames: [String], version: String) -> String {
        let events = configuration.sendTaskEvents ? "ON" : "OFF (enable -E to monitor tasks in this worker)"
        let queues = configuration.queues.map { name in
            let binding = configuration.binding(of: name)
            let padded = name.padding(toLength: max(16, name.count), withPad: " ", startingAt: 0)
            return ".> \(padded) exchange=\(binding.exchange)(\(binding.exchangeType.rawValue)) key=\(binding.routingKey)"
        }
        let host = host()
        let platform = host.system + "-" + host.release
        let info =
            [
                "\(configuration.nodeName) v\(version) (swift-celery-worker)",
                "",
                "\(platform) \(CeleryTimestamp.isoformat(unixSeconds: WallClock.now()).prefix(19).replacingOccurrences(of: "T", with: " "))",
                "",
                "[config]",
                ".> app:         swift-celery-worker",
                ".> transport:   \(configuration.brokerURL.brokerDisplay)",
                ".> results:     \(configuration.resultBackendShown)",
                ".> concurrency: \(configuration.poolAutoscale.map { "{min=\($0.min), max=\($0.max)}" } ?? "\(configuration.concurrency)") (swift \(configuration.pool == .process ? "processes" : configuration.pool == .solo ? "solo" : "threads"))",
                ".> task events: \(events)",
                "",
                "[queues]",
            ] + queues
        var lines: [String] = []
        for (index, line) in info.enumerated() {
            let prefix = index < art.count ? art[index] : String(repeating: " ", count: 15)
            lines.append("\(prefix) \(line)")
        }
        for index in info.count..<max(info.count, art.count) { lines.append(art[index]) }
        lines.append("")
        lines.append("[tasks]")
        lines.append(contentsOf: taskNames.map { "  . \($0)" })
        return "\n" + lines.joined(separator: "\n") + "\n"
    }
}
