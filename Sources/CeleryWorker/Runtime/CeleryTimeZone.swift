import CeleryProtocol
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A time zone as Celery's `timezone` setting names it.
///
/// UTC and its aliases (`Etc/UTC`, `GMT`, `Zulu`, …) need no time zone database: the worker then never loads
/// ICU, which Foundation's `TimeZone` uses for every zone, UTC included (about 3 MB of resident memory). Any other
/// name is read through `TimeZone`.
public struct CeleryTimeZone: Sendable, Hashable, CustomStringConvertible {
    /// The name it was given (`UTC`, `Europe/Paris`).
    public let identifier: String
    /// `nil` for UTC.
    private let zone: TimeZone?

    /// UTC, Celery's default.
    public static let utc = CeleryTimeZone(identifier: "UTC", zone: nil)

    /// The names that mean UTC, as in the IANA database.
    static let utcNames: Set<String> = [
        "UTC", "Etc/UTC", "UCT", "Etc/UCT", "GMT", "Etc/GMT", "GMT0", "Etc/GMT0", "GMT+0", "GMT-0", "Etc/GMT+0",
        "Etc/GMT-0", "Greenwich", "Etc/Greenwich", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu",
    ]

    private init(identifier: String, zone: TimeZone?) {
        self.identifier = identifier
        self.zone = zone
    }

    /// The zone with this IANA name; `nil` when no such zone exists.
    public init?(identifier: String) {
        if Self.utcNames.contains(identifier) {
            self.init(identifier: identifier, zone: nil)
            return
        }
        guard let zone = TimeZone(identifier: identifier) else { return nil }
        self.init(identifier: identifier, zone: zone)
    }

    /// Celery's `app.timezone`: the zone `timezone` names; without one, UTC, or with `enable_utc` off the machine's
    /// local zone (from `TZ`, else `/etc/localtime`), as Celery reads it. Throws for a name no zone has.
    public static func app(named name: String?, enableUTC: Bool) throws(CeleryWorkerError) -> CeleryTimeZone {
        if let name {
            guard let zone = CeleryTimeZone(identifier: name) else {
                throw CeleryWorkerError(code: .invalidConfiguration, message: "Unknown time zone '\(name)'.")
            }
            return zone
        }
        if enableUTC { return .utc }
        let local = TimeZone.current
        return CeleryTimeZone(identifier: local.identifier) ?? CeleryTimeZone(local)
    }

    /// A Foundation time zone.
    public init(_ zone: TimeZone) {
        self.init(identifier: zone.identifier, zone: zone)
    }

    /// The zone's offset from UTC, in seconds east, at a Unix time.
    public func secondsFromGMT(at unixSeconds: Double) -> Int {
        guard let zone else { return 0 }
        return zone.secondsFromGMT(for: Date(timeIntervalSince1970: unixSeconds))
    }

    /// A Unix time as Python's `datetime.isoformat()` writes it in this zone (`2026-11-25T01:20:32.092184+01:00`).
    public func isoformat(unixSeconds: Double) -> String {
        CeleryTimestamp.isoformat(unixSeconds: unixSeconds, offsetSeconds: secondsFromGMT(at: unixSeconds))
    }

    public var description: String { identifier }

    /// The offset of the machine's local time from UTC now, in seconds east (from the C library, which reads `TZ`
    /// and `/etc/localtime`, as Python's `time` module does).
    static var localSecondsFromGMT: Int {
        var now = time(nil)
        var parts = tm()
        guard localtime_r(&now, &parts) != nil else { return 0 }
        return Int(parts.tm_gmtoff)
    }
}
