import Foundation

/// Celery's `solar(event, lat, lon)` schedule: a periodic task runs at a solar event (sunrise, sunset, solar noon, or
/// a dawn or dusk) at a place on the Earth.
///
/// Celery asks PyEphem for the event's next time, with the observer at sea level and no refraction; this schedule
/// takes the same steps as PyEphem's search (`next_rising`, `next_setting` and `next_transit`, the horizon, the
/// Sun's upper edge or centre) over a model of the Sun that agrees with PyEphem's to within an arcsecond, so the
/// times agree with Celery's to within a fraction of a second (tested against Celery 5.7 and PyEphem 4.2).
///
/// ```swift
/// let evening = try SolarSchedule(event: "sunset", latitude: 48.8566, longitude: 2.3522)   // sunset in Paris
/// ```
public struct SolarSchedule: Sendable, Hashable, CustomStringConvertible {
    /// The events Celery knows, by Celery's names.
    public enum Event: String, Sendable, CaseIterable {
        case dawnAstronomical = "dawn_astronomical"
        case dawnNautical = "dawn_nautical"
        case dawnCivil = "dawn_civil"
        case sunrise
        case solarNoon = "solar_noon"
        case sunset
        case duskCivil = "dusk_civil"
        case duskNautical = "dusk_nautical"
        case duskAstronomical = "dusk_astronomical"

        /// Where the Sun is at the event, in degrees (Celery's `_horizons`): 34′ below the horizon for sunrise and
        /// sunset, 6°, 12° or 18° for the dawns and dusks.
        var horizon: Double {
            switch self {
            case .dawnAstronomical, .duskAstronomical: -18
            case .dawnNautical, .duskNautical: -12
            case .dawnCivil, .duskCivil: -6
            case .sunrise, .sunset: -34.0 / 60
            case .solarNoon: 0
            }
        }

        /// Whether the Sun's centre is at the horizon (dawns and dusks) rather than its upper edge (sunrise and
        /// sunset), Celery's `_use_center_l`.
        var usesCentre: Bool { ![.sunrise, .solarNoon, .sunset].contains(self) }
    }

    public let event: Event
    /// Degrees north, −90 to 90.
    public let latitude: Double
    /// Degrees east, −180 to 180.
    public let longitude: Double
    /// The coordinates as Python prints them, for ``description``.
    private let writtenLatitude: String
    private let writtenLongitude: String

    /// The schedule of `event` (Celery's name: `sunrise`, `sunset`, `solar_noon`, `dawn_civil`, …) at `latitude`
    /// and `longitude` in degrees. Throws Celery's own message for an unknown event or a coordinate out of range.
    public init(event: String, latitude: Double, longitude: Double) throws(CeleryWorkerError) {
        try self.init(event: event, latitude: latitude, longitude: longitude, written: nil)
    }

    /// `written`: the coordinates as the configuration wrote them (`40` for a whole number, which Python prints
    /// without `.0`).
    init(event: String, latitude: Double, longitude: Double, written: (latitude: String, longitude: String)?)
        throws(CeleryWorkerError)
    {
        writtenLatitude = written?.latitude ?? latitude.description
        writtenLongitude = written?.longitude ?? longitude.description
        guard let known = Event(rawValue: event) else {
            let all = Event.allCases.map(\.rawValue).sorted().joined(separator: ", ")
            throw Self.refusal("Argument event \"\(event)\" is invalid, must be one of \(all).")
        }
        guard (-90...90).contains(latitude) else {
            throw Self.refusal("Argument latitude \(writtenLatitude) is invalid, must be between -90 and 90.")
        }
        guard (-180...180).contains(longitude) else {
            throw Self.refusal("Argument longitude \(writtenLongitude) is invalid, must be between -180 and 180.")
        }
        self.event = known
        self.latitude = latitude
        self.longitude = longitude
    }

    private static func refusal(_ message: String) -> CeleryWorkerError {
        CeleryWorkerError(code: .invalidConfiguration, message: message)
    }

    /// As Celery's `repr`: `<solar: sunset at latitude 48.8566, longitude: 2.3522>`.
    public var description: String {
        "<solar: \(event.rawValue) at latitude \(writtenLatitude), longitude: \(writtenLongitude)>"
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.event == rhs.event && lhs.latitude == rhs.latitude && lhs.longitude == rhs.longitude
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(event)
        hasher.combine(latitude)
        hasher.combine(longitude)
    }

    /// The first time of the event after `time` (Unix times), as Celery 5.7's `solar._next_event`: where the event
    /// does not happen that day (near the poles), the search goes on from the next antitransit, for at most 366
    /// days, and answers the time it stopped at if the event never came.
    public func nextEvent(after time: Double) -> Double {
        var start = time / 86_400 + Self.unixEpochInEphemDays
        for _ in 0..<366 {
            if let found = search(from: start) { return (found - Self.unixEpochInEphemDays) * 86_400 }
            start = transit(from: start, offset: .pi)
        }
        return (start - Self.unixEpochInEphemDays) * 86_400
    }

    /// 1970-01-01 00:00 UT as a PyEphem date (days since 1899-12-31 12:00 UT).
    private static let unixEpochInEphemDays = 25_567.5
    /// PyEphem's `default_newton_precision`: a tenth of a second, in days.
    private static let precision = 1.0 / 864_000

    private var latitudeRadians: Double { latitude * .pi / 180 }
    private var longitudeRadians: Double { longitude * .pi / 180 }

    private func sun(_ date: Double) -> SunPosition {
        SunPosition(date: date, latitude: latitudeRadians, longitude: longitudeRadians)
    }

    /// The event's next time after `start` (PyEphem dates); `nil` when PyEphem raises `CircumpolarError`.
    private func search(from start: Double) -> Double? {
        switch event {
        case .solarNoon: transit(from: start, offset: 0)
        case .dawnAstronomical, .dawnNautical, .dawnCivil, .sunrise: riseOrSet(from: start, rising: true)
        case .sunset, .duskCivil, .duskNautical, .duskAstronomical: riseOrSet(from: start, rising: false)
        }
    }

    /// PyEphem's `Observer._find_rise_or_set` forward in time: from `start`, step to the hour angle at which the Sun
    /// reaches the horizon, seven times at most, until a step is below a tenth of a second. When the Sun's path that
    /// day stays above or below the horizon, there is no such time (PyEphem's `AlwaysUpError`, `NeverUpError`).
    private func riseOrSet(from start: Double, rising: Bool) -> Double? {
        let slightlyMoreThanPi = Double.pi + 1e-15
        let slightlyLessThanZero = -1e-15
        var date = start
        var absoluteTarget = 0.0
        var first = true
        for _ in 0..<7 {
            let sun = sun(date)
            var horizon = event.horizon * .pi / 180
            if !event.usesCentre { horizon -= sun.radius }
            let lat = latitudeRadians
            let cosine = (sin(horizon) - sin(lat) * sin(sun.declination)) / (cos(lat) * cos(sun.declination))
            absoluteTarget = cosine < -1 ? slightlyMoreThanPi : cosine > 1 ? slightlyLessThanZero : acos(cosine)
            let target = rising ? -absoluteTarget : absoluteTarget
            var bump: Double
            if first {
                bump = Self.pythonModulo(target - sun.hourAngle, 2 * .pi) / (2 * .pi)
                if abs(bump) < Self.precision { bump += 1 }
            } else {
                bump = (Self.pythonModulo(target - sun.hourAngle - .pi, 2 * .pi) - .pi) / (2 * .pi)
            }
            if abs(bump) < Self.precision { break }
            date += bump
            first = false
        }
        if absoluteTarget == slightlyMoreThanPi || absoluteTarget == slightlyLessThanZero { return nil }
        return date
    }

    /// PyEphem's `Observer._compute_transit` forward in time: the next time after `start` that the Sun crosses the
    /// meridian (`offset` 0) or the antimeridian (π), by the secant method to a tenth of a second.
    private func transit(from start: Double, offset: Double) -> Double {
        func distance(_ date: Double) -> Double {
            let sun = sun(date)
            return Self.pythonModulo(offset - sun.siderealTime + sun.geocentricRightAscension + .pi, 2 * .pi) - .pi
        }
        let now = sun(start)
        var toMove = Self.pythonModulo(offset - (now.siderealTime - now.geocentricRightAscension), 2 * .pi)
        if abs(toMove) < Double.pi / 648_000 / 360 { toMove = 2 * .pi }
        var x0 = start + toMove / (2 * .pi)
        var x1 = x0 + 1.0 / 1440
        var f0 = distance(x0)
        var f1 = distance(x1)
        while f1 != 0, abs(x1 - x0) > Self.precision, f1 != f0 {
            (x0, x1) = (x1, x1 + (x1 - x0) / (f0 / f1 - 1))
            (f0, f1) = (f1, distance(x1))
        }
        return x1
    }

    /// Python's `a % b` for floats: the result has the sign of `b`.
    private static func pythonModulo(_ a: Double, _ b: Double) -> Double {
        let remainder = fmod(a, b)
        return remainder != 0 && (remainder < 0) != (b < 0) ? remainder + b : remainder
    }
}
