import CeleryProtocol
import Foundation

/// Celery's `crontab` schedule: the minutes, hours, days of the week, days of the month and months of the year a
/// periodic task runs at, each a cron field as Celery's `crontab_parser` reads it (`*`, `*/15`, `9-17`, `50-10`
/// wrapping around, `1-31/3`, `mon-fri`, `jan,jul`, lists joined by commas). As in Celery, and unlike cron, a day
/// must match both `day_of_month` and `day_of_week`. Times are read in the app's time zone (`timezone`).
///
/// ```swift
/// let nightly = try Crontab(minute: "0", hour: "4")                // 04:00 every day
/// let office = try Crontab(minute: "*/30", hour: "9-17", dayOfWeek: "mon-fri")
/// ```
public struct Crontab: Sendable, Hashable, CustomStringConvertible {
    /// The fields as written, for ``description``.
    public let minuteSpec: String
    public let hourSpec: String
    public let dayOfWeekSpec: String
    public let dayOfMonthSpec: String
    public let monthOfYearSpec: String
    /// The fields expanded: minutes 0–59, hours 0–23, days of the week 0–6 (0 is Sunday), days of the month 1–31,
    /// months 1–12.
    public let minutes: Set<Int>
    public let hours: Set<Int>
    public let daysOfWeek: Set<Int>
    public let daysOfMonth: Set<Int>
    public let monthsOfYear: Set<Int>

    /// A crontab from Celery's keyword arguments, `*` where left out. Throws Celery's own message for a field it
    /// refuses (`Invalid end range: 60 > 59.`), and for days of the month that no month of the year has.
    public init(
        minute: String = "*", hour: String = "*", dayOfWeek: String = "*", dayOfMonth: String = "*", monthOfYear: String = "*"
    ) throws(CeleryWorkerError) {
        minuteSpec = minute
        hourSpec = hour
        dayOfWeekSpec = dayOfWeek
        dayOfMonthSpec = dayOfMonth
        monthOfYearSpec = monthOfYear
        minutes = try Self.field(minute, count: 60, from: 0)
        hours = try Self.field(hour, count: 24, from: 0)
        daysOfWeek = try Self.field(dayOfWeek, count: 7, from: 0)
        daysOfMonth = try Self.field(dayOfMonth, count: 31, from: 1)
        monthsOfYear = try Self.field(monthOfYear, count: 12, from: 1)
        let days = daysOfMonth
        guard monthsOfYear.contains(where: { month in days.contains { $0 <= CivilDate.longestMonths[month] } }) else {
            throw Self.invalid(
                "Invalid crontab: day_of_month '\(dayOfMonth)' never occurs in month_of_year '\(monthOfYear)'.")
        }
    }

    /// Celery's `crontab.from_string`: `minute hour day-of-month month day-of-week`, cron's order.
    public init(cronString: String) throws(CeleryWorkerError) {
        let fields = cronString.split(separator: " ").map(String.init)
        guard fields.count == 5 else {
            throw Self.invalid("a crontab string has five fields (minute hour day-of-month month day-of-week), got '\(cronString)'")
        }
        try self.init(minute: fields[0], hour: fields[1], dayOfWeek: fields[4], dayOfMonth: fields[2], monthOfYear: fields[3])
    }

    /// As Celery's `repr`: `<crontab: 0 4 * * * (m/h/dM/MY/d)>`.
    public var description: String {
        "<crontab: \(minuteSpec) \(hourSpec) \(dayOfMonthSpec) \(monthOfYearSpec) \(dayOfWeekSpec) (m/h/dM/MY/d)>"
    }

    public static func == (lhs: Crontab, rhs: Crontab) -> Bool {
        lhs.minutes == rhs.minutes && lhs.hours == rhs.hours && lhs.daysOfWeek == rhs.daysOfWeek
            && lhs.daysOfMonth == rhs.daysOfMonth && lhs.monthsOfYear == rhs.monthsOfYear
    }

    public func hash(into hasher: inout Hasher) {
        for field in [minutes, hours, daysOfWeek, daysOfMonth, monthsOfYear] { hasher.combine(field) }
    }

    // MARK: When it runs

    /// The first minute after the minute of `unixTime` at which the crontab runs, as a Unix time, reckoned in
    /// `zone`'s wall-clock time as Celery's `remaining_delta` reckons it (a wall-clock time that a change to summer
    /// time skips is read with the offset before the change, one that occurs twice as its first occurrence, as
    /// Python's `zoneinfo` reads them). `nil` when none comes within the next 400 years.
    public func nextRun(after unixTime: Double, in zone: CeleryTimeZone) -> Double? {
        let offset = zone.secondsFromGMT(at: unixTime)
        var local = (Int64((unixTime + Double(offset)).rounded(.down)) / 60 + 1) * 60
        let end = local + 400 * 366 * 86_400
        while local < end {
            let date = CivilDate(localSeconds: local)
            if !monthsOfYear.contains(date.month) {
                local = CivilDate.localSeconds(year: date.year, month: date.month + 1, day: 1)
            } else if !daysOfMonth.contains(date.day) || !daysOfWeek.contains(date.weekday) {
                local = CivilDate.localSeconds(year: date.year, month: date.month, day: date.day + 1)
            } else if !hours.contains(date.hour) {
                local = (local / 3600 + 1) * 3600
            } else if !minutes.contains(date.minute) {
                local += 60
            } else {
                return Self.unixTime(ofLocal: local, in: zone)
            }
        }
        return nil
    }

    /// A wall-clock time in `zone` as a Unix time, read as Python's `zoneinfo` reads it with `fold=0`: the first
    /// of two occurrences, and for a time that a change skips, the offset before the change.
    static func unixTime(ofLocal local: Int64, in zone: CeleryTimeZone) -> Double {
        let seconds = Double(local)
        let before = zone.secondsFromGMT(at: seconds - 86_400)
        let after = zone.secondsFromGMT(at: seconds + 86_400)
        let valid = [before, after].map { seconds - Double($0) }.filter { Double(zone.secondsFromGMT(at: $0)) == seconds - $0 }
        return valid.min() ?? seconds - Double(before)
    }

    // MARK: Parsing, as Celery's crontab_parser

    static func invalid(_ message: String) -> CeleryWorkerError {
        CeleryWorkerError(code: .invalidConfiguration, message: message)
    }

    /// One field: parts joined by commas, each `*`, `*/step`, `a-b`, `a-b/step` or one value.
    static func field(_ spec: String, count: Int, from minimum: Int) throws(CeleryWorkerError) -> Set<Int> {
        var values = Set<Int>()
        for part in spec.split(separator: ",", omittingEmptySubsequences: false) {
            guard !part.isEmpty else { throw invalid("empty part") }
            values.formUnion(try Self.part(String(part), count: count, from: minimum))
        }
        return values
    }

    private static func isWord(_ character: Character) -> Bool {
        character.isLetter || character.isNumber || character == "_"
    }

    /// The longest run of word characters (Python's `\w+`) at the start of `text`.
    private static func word(_ text: Substring) -> Substring {
        text.prefix(while: isWord)
    }

    private static func part(_ part: String, count: Int, from minimum: Int) throws(CeleryWorkerError) -> [Int] {
        let star = Array(minimum..<(minimum + count))
        if part == "*" { return star }
        if part.hasPrefix("*/") {
            return try stepped(star, by: word(part.dropFirst(2)))
        }
        // `(\w+?)-(\w+)`, then `/(\w+)?` for steps; what follows is not read, as in Celery's `re.match`.
        let first = word(part[...])
        let rest = part[first.endIndex...]
        if !first.isEmpty, rest.first == "-" {
            let second = word(rest.dropFirst())
            if !second.isEmpty {
                let range = try expand(String(first), String(second), count: count, from: minimum)
                let after = rest.dropFirst().dropFirst(second.count)
                if after.first == "/" { return try stepped(range, by: word(after.dropFirst())) }
                return range
            }
        }
        return [try number(part, count: count, from: minimum)]
    }

    private static func stepped(_ values: [Int], by step: Substring) throws(CeleryWorkerError) -> [Int] {
        guard !step.isEmpty else { throw invalid("empty filter") }
        guard let every = Int(step) else { throw invalid("invalid literal for int() with base 10: '\(step)'") }
        guard every > 0 else { throw invalid("slice step cannot be zero") }
        return stride(from: 0, to: values.count, by: every).map { values[$0] }
    }

    /// `a-b`, wrapping around the field's end when `b` is below `a`.
    private static func expand(_ from: String, _ to: String, count: Int, from minimum: Int) throws(CeleryWorkerError) -> [Int] {
        let low = try number(from, count: count, from: minimum)
        let high = try number(to, count: count, from: minimum)
        if high < low { return Array(low..<(minimum + count)) + Array(minimum...high) }
        return Array(low...high)
    }

    private static let weekdays = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
    private static let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]

    /// A number, or a month or weekday by the first three letters of its English name, in the field's range.
    private static func number(_ text: String, count: Int, from minimum: Int) throws(CeleryWorkerError) -> Int {
        if text.first == "-" { throw invalid("negative numbers not supported") }
        let value: Int
        if let number = Int(text.trimmingCharacters(in: .whitespaces)) {
            value = number
        } else if let month = months.firstIndex(of: text.prefix(3).lowercased()) {
            value = month + 1
        } else if let day = weekdays.firstIndex(of: text.prefix(3).lowercased()) {
            value = day
        } else {
            throw invalid("Invalid weekday literal '\(text)'.")
        }
        let maximum = minimum + count - 1
        if value > maximum { throw invalid("Invalid end range: \(value) > \(maximum).") }
        if value < minimum { throw invalid("Invalid beginning range: \(value) < \(minimum).") }
        return value
    }
}

/// A wall-clock date and time from seconds counted as if every day had 86 400 of them (a Unix time plus a zone's
/// offset), by the proleptic Gregorian calendar.
struct CivilDate: Equatable {
    var year: Int
    var month: Int
    var day: Int
    var hour: Int
    var minute: Int
    var second: Int
    /// 0 is Sunday, as in cron and Celery.
    var weekday: Int
    /// The day, counted from 1970-01-01.
    var days: Int64

    init(localSeconds: Int64) {
        days = localSeconds >= 0 ? localSeconds / 86_400 : (localSeconds - 86_399) / 86_400
        let inDay = Int(localSeconds - days * 86_400)
        hour = inDay / 3600
        minute = inDay % 3600 / 60
        second = inDay % 60
        weekday = Int(((days + 4) % 7 + 7) % 7)  // 1970-01-01 was a Thursday
        (year, month, day) = CeleryTimestamp.civil(fromDays: days)
    }

    /// Each month's most days (a leap year's), by its number (index 0 unused).
    static let longestMonths = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

    /// The day of the week as Python's `weekday()` and dateutil count it: 0 is Monday.
    var pythonWeekday: Int { (weekday + 6) % 7 }

    /// Midnight of a day, as local seconds; a month past 12 or a day past the month's end carries over.
    static func localSeconds(year: Int, month: Int, day: Int) -> Int64 {
        let carriedYear = year + (month - 1) / 12
        let carriedMonth = (month - 1) % 12 + 1
        return Int64(CeleryTimestamp.daysFromCivil(year: carriedYear, month: carriedMonth, day: day)) * 86_400
    }
}
