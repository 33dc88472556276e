import CeleryProtocol
import Foundation

/// dateutil's `rrule` as celery-redbeat's `rrule` schedule keeps it: a frequency (`YEARLY` … `SECONDLY`) with an
/// interval counted from `dtstart`, `count` and `until`, the `bymonth`, `bymonthday` and `byyearday` (negative from
/// the end), `byweekday`, `byweekno`, `byeaster`, `byhour`, `byminute` and `bysecond` filters, with dateutil's
/// defaults taken from `dtstart` where they are left out, and `bysetpos`. RedBeat keeps `dtstart`'s UTC offset alone,
/// so the rule runs on that fixed offset's wall clock, as dateutil runs it there. (RedBeat keeps a weekday without
/// its `n`, so `byweekday=FR(-1)` reaches it as every Friday; `bysetpos` says the last.)
public struct RecurrenceRule: Sendable, Hashable, CustomStringConvertible {
    /// dateutil's frequencies, by its numbers.
    public enum Frequency: Int, Sendable, Hashable, Comparable {
        case yearly = 0, monthly, weekly, daily, hourly, minutely, secondly

        public static func < (lhs: Frequency, rhs: Frequency) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    /// `freq`: the unit of the periods the rule steps through.
    public let frequency: Frequency
    /// `dtstart`, whole Unix seconds.
    public let start: Int64
    /// `dtstart`'s UTC offset in seconds: the rule's wall clock.
    public let offset: Int64
    /// `interval`: how many periods each step moves on.
    public let interval: Int
    /// `wkst`: the first day of a week, 0 for Monday.
    public let weekStart: Int
    /// `count`: how many occurrences there are in all, from `dtstart`; `nil`: no end.
    public let count: Int?
    /// `until`, as a Unix time: no occurrence after it.
    public let until: Double?
    /// `bymonth`, 1 to 12. This and the other filters hold dateutil's defaults from `dtstart`; `nil`: no filter.
    public let months: Set<Int>?
    /// `bymonthday`: days of the month, negative from its end.
    public let monthDays: Set<Int>?
    /// `byweekday`: 0 for Monday, as dateutil counts them.
    public let weekdays: Set<Int>?
    /// `byhour`, `byminute` and `bysecond`.
    public let hours: Set<Int>?
    public let minutes: Set<Int>?
    public let seconds: Set<Int>?
    /// `byyearday`: days of the year, negative from its end.
    public let yearDays: Set<Int>?
    /// `bysetpos`: which of each period's occurrences are kept, by position (1 the first, -1 the last).
    public let positions: Set<Int>?
    /// `byweekno`: week numbers as dateutil counts them (week 1 has at least four days of the year, weeks start on
    /// `wkst`), negative from the year's end.
    public let weekNumbers: Set<Int>?
    /// `byeaster`: days from Western Easter.
    public let easterOffsets: Set<Int>?

    /// A rule as dateutil's `rrule(freq, dtstart, interval, wkst, count, until, bymonth, bymonthday, byweekday,
    /// byhour, byminute, bysecond)` makes it, `dtstart` at the fixed UTC `offset` (seconds). Throws for values
    /// dateutil refuses.
    public init(
        frequency: Frequency, start: Int64, offset: Int64 = 0, interval: Int = 1, weekStart: Int = 0, count: Int? = nil,
        until: Double? = nil, months: Set<Int>? = nil, monthDays: Set<Int>? = nil, weekdays: Set<Int>? = nil,
        hours: Set<Int>? = nil, minutes: Set<Int>? = nil, seconds: Set<Int>? = nil, yearDays: Set<Int>? = nil,
        positions: Set<Int>? = nil, weekNumbers: Set<Int>? = nil, easterOffsets: Set<Int>? = nil
    ) throws(CeleryWorkerError) {
        func check(_ values: Set<Int>?, _ range: ClosedRange<Int>, _ name: String) throws(CeleryWorkerError) {
            guard let values else { return }
            guard !values.isEmpty, values.allSatisfy({ range.contains($0) }) else {
                throw CeleryWorkerError(code: .invalidConfiguration, message: "rrule: \(name) out of range")
            }
        }
        guard interval > 0 else { throw CeleryWorkerError(code: .invalidConfiguration, message: "rrule: interval must be above 0") }
        guard (0...6).contains(weekStart) else { throw CeleryWorkerError(code: .invalidConfiguration, message: "rrule: wkst out of range") }
        try check(months, 1...12, "bymonth")
        try check(monthDays, -31...31, "bymonthday")
        if monthDays?.contains(0) == true { throw CeleryWorkerError(code: .invalidConfiguration, message: "rrule: bymonthday 0") }
        try check(weekdays, 0...6, "byweekday")
        try check(hours, 0...23, "byhour")
        try check(minutes, 0...59, "byminute")
        try check(seconds, 0...59, "bysecond")
        try check(yearDays, -366...366, "byyearday")
        try check(positions, -366...366, "bysetpos")
        if yearDays?.contains(0) == true || positions?.contains(0) == true {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "rrule: byyearday and bysetpos exclude 0")
        }
        self.frequency = frequency
        self.start = start
        self.offset = offset
        self.interval = interval
        self.weekStart = weekStart
        self.count = count
        self.until = until
        let first = CivilDate(localSeconds: start + offset)
        var (months, monthDays, weekdays) = (months, monthDays, weekdays)
        // dateutil: without any day filter, a yearly rule keeps dtstart's month and day, a monthly one its day of the
        // month, a weekly one its day of the week.
        try check(weekNumbers, -53...53, "byweekno")
        if weekNumbers?.contains(0) == true { throw CeleryWorkerError(code: .invalidConfiguration, message: "rrule: byweekno 0") }
        try check(easterOffsets, -366...366, "byeaster")
        if monthDays == nil && weekdays == nil && yearDays == nil && weekNumbers == nil && easterOffsets == nil {
            switch frequency {
            case .yearly:
                if months == nil { months = [first.month] }
                monthDays = [first.day]
            case .monthly: monthDays = [first.day]
            case .weekly: weekdays = [first.pythonWeekday]
            default: break
            }
        }
        self.months = months
        self.monthDays = monthDays
        self.weekdays = weekdays
        // And the units of time below the frequency's default to dtstart's.
        self.hours = hours ?? (frequency < .hourly ? [first.hour] : nil)
        self.minutes = minutes ?? (frequency < .minutely ? [first.minute] : nil)
        self.seconds = seconds ?? (frequency < .secondly ? [first.second] : nil)
        self.yearDays = yearDays
        self.positions = positions
        self.weekNumbers = weekNumbers
        self.easterOffsets = easterOffsets
    }

    /// A short form of RedBeat's `repr`: the frequency's number, `dtstart` and the interval.
    public var description: String {
        "<rrule: freq: \(frequency.rawValue), dtstart: \(CeleryTimestamp.isoformat(unixSeconds: Double(start), offsetSeconds: Int(offset))), interval: \(interval)>"
    }

    static func daysInMonth(year: Int, month: Int) -> Int {
        let (nextYear, nextMonth) = month == 12 ? (year + 1, 1) : (year, month + 1)
        return CeleryTimestamp.daysFromCivil(year: nextYear, month: nextMonth, day: 1)
            - CeleryTimestamp.daysFromCivil(year: year, month: month, day: 1)
    }

    /// Whether a day passes the day filters (each that is set must match, as in dateutil).
    func dayMatches(_ fields: CivilDate, in masks: YearMasks?) -> Bool {
        if let masks {
            let index = Int(fields.days - masks.yearStart)
            if weekNumbers != nil && !masks.weekNumbers.contains(index) { return false }
            if easterOffsets != nil && !masks.easter.contains(index) { return false }
        }
        if let months, !months.contains(fields.month) { return false }
        if let weekdays, !weekdays.contains(fields.pythonWeekday) { return false }
        if let monthDays {
            let length = Self.daysInMonth(year: fields.year, month: fields.month)
            if !monthDays.contains(fields.day) && !monthDays.contains(fields.day - length - 1) { return false }
        }
        if let yearDays {
            let first = Int64(CeleryTimestamp.daysFromCivil(year: fields.year, month: 1, day: 1))
            let length = Int(Int64(CeleryTimestamp.daysFromCivil(year: fields.year + 1, month: 1, day: 1)) - first)
            let day = Int(fields.days - first) + 1
            if !yearDays.contains(day) && !yearDays.contains(day - length - 1) { return false }
        }
        return true
    }

    /// The period (of the frequency's unit) that a wall-clock time falls in, counted from dtstart's.
    func unit(of wall: Int64) -> Int64 {
        let fields = CivilDate(localSeconds: wall)
        switch frequency {
        case .yearly: return Int64(fields.year)
        case .monthly: return Int64(fields.year) * 12 + Int64(fields.month - 1)
        case .weekly: return Self.floorDivide(fields.days - Int64((fields.pythonWeekday - weekStart + 7) % 7) - weekOrigin, 7)
        case .daily: return fields.days
        case .hourly: return Self.floorDivide(wall, 3600)
        case .minutely: return Self.floorDivide(wall, 60)
        case .secondly: return wall
        }
    }

    /// A year's days (by index from its 1 January, the next January's first week included) that `byweekno` and
    /// `byeaster` keep, as dateutil's `_iterinfo.rebuild` marks them.
    struct YearMasks {
        var yearStart: Int64
        var weekNumbers: Set<Int> = []
        var easter: Set<Int> = []
    }

    func yearMasks(year: Int) -> YearMasks {
        let yearStart = Int64(CeleryTimestamp.daysFromCivil(year: year, month: 1, day: 1))
        var masks = YearMasks(yearStart: yearStart)
        let yearLength = CeleryTimestamp.daysFromCivil(year: year + 1, month: 1, day: 1) - Int(yearStart)
        let yearWeekday = CivilDate(localSeconds: yearStart * 86_400).pythonWeekday
        func weekday(_ index: Int) -> Int { (yearWeekday + index) % 7 }
        func mod7(_ value: Int) -> Int { (value % 7 + 7) % 7 }
        if let weekNumbers {
            let firstWeekStart = mod7(7 - yearWeekday + weekStart)
            var weekOne = firstWeekStart
            let weekYearLength: Int
            if weekOne >= 4 {
                weekOne = 0
                weekYearLength = yearLength + mod7(yearWeekday - weekStart)
            } else {
                weekYearLength = yearLength - weekOne
            }
            let weeks = weekYearLength / 7 + weekYearLength % 7 / 4
            func mark(from first: Int) {
                var index = first
                for _ in 0..<7 {
                    masks.weekNumbers.insert(index)
                    index += 1
                    if weekday(index) == weekStart { break }
                }
            }
            for number in weekNumbers {
                let week = number < 0 ? number + weeks + 1 : number
                guard week > 0 && week <= weeks else { continue }
                var index = weekOne
                if week > 1 {
                    index = weekOne + (week - 1) * 7
                    if weekOne != firstWeekStart { index -= 7 - firstWeekStart }
                }
                mark(from: index)
            }
            if weekNumbers.contains(1) {
                // Week 1 of the next year, where it starts in this one.
                var index = weekOne + weeks * 7
                if weekOne != firstWeekStart { index -= 7 - firstWeekStart }
                if index < yearLength { mark(from: index) }
            }
            if weekOne != 0 {
                // The days before week 1 belong to the last week of the year before (dateutil's reckoning, its use of
                // this year's length included).
                var lastWeeks = -1
                if !weekNumbers.contains(-1) {
                    let lastYearStart = CeleryTimestamp.daysFromCivil(year: year - 1, month: 1, day: 1)
                    let lastYearWeekday = CivilDate(localSeconds: Int64(lastYearStart) * 86_400).pythonWeekday
                    let lastYearLength = Int(yearStart) - lastYearStart
                    if mod7(7 - lastYearWeekday + weekStart) >= 4 {
                        lastWeeks = 52 + (lastYearLength + mod7(lastYearWeekday - weekStart)) % 7 / 4
                    } else {
                        lastWeeks = 52 + (yearLength - weekOne) % 7 / 4
                    }
                }
                if weekNumbers.contains(lastWeeks) { masks.weekNumbers.formUnion(0..<weekOne) }
            }
        }
        if let easterOffsets {
            let easter = Int(Self.westernEaster(year: year) - yearStart)
            for offset in easterOffsets {
                // A Python list's index: a negative one counts from the end (the year's days and 7 more).
                let index = easter + offset < 0 ? easter + offset + yearLength + 7 : easter + offset
                if index >= 0 && index < yearLength + 7 { masks.easter.insert(index) }
            }
        }
        return masks
    }

    /// dateutil's `easter(year)` (its method 3, the Western one), as a day counted from 1970-01-01.
    static func westernEaster(year: Int) -> Int64 {
        let golden = year % 19
        let century = year / 100
        let h = (century - century / 4 - (8 * century + 13) / 25 + 19 * golden + 15) % 30
        let i = h - (h / 28) * (1 - (h / 28) * (29 / (h + 1)) * ((21 - golden) / 11))
        let j = (year + year / 4 + i + 2 - century + century / 4) % 7
        let p = i - j
        let day = 1 + (p + 27 + (p + 6) / 40) % 31
        let month = 3 + (p + 26) / 30
        return Int64(CeleryTimestamp.daysFromCivil(year: year, month: month, day: day))
    }

    /// Whether the day filters leave any day of any year: no month of `months` has a day of `monthDays` (31 April,
    /// 30 February) means none, where dateutil would look until the year 10000.
    var canOccur: Bool {
        guard let months, let monthDays else { return true }
        return months.contains { month in monthDays.contains { abs($0) <= CivilDate.longestMonths[month] } }
    }

    /// The first day (counted from 1970-01-01, a Thursday) of week 0: the first `wkst` day from then.
    var weekOrigin: Int64 { Int64((weekStart + 4) % 7) }

    static func floorDivide(_ value: Int64, _ divisor: Int64) -> Int64 {
        value >= 0 ? value / divisor : (value - divisor + 1) / divisor
    }

    /// The occurrences in one period (by its unit number), as wall-clock seconds in order; `nil` past year 9999.
    /// `masks` keeps each year's `byweekno` and `byeaster` days, made once per year as dateutil makes them.
    func occurrences(inUnit unit: Int64, masks cache: inout [Int: YearMasks]) -> [Int64]? {
        let days: [Int64]
        switch frequency {
        case .yearly:
            guard unit <= 9999 else { return nil }
            let first = Int64(CeleryTimestamp.daysFromCivil(year: Int(unit), month: 1, day: 1))
            days = Array(first..<Int64(CeleryTimestamp.daysFromCivil(year: Int(unit) + 1, month: 1, day: 1)))
        case .monthly:
            let (year, month) = Self.month(ofUnit: unit)
            guard year <= 9999 else { return nil }
            if let months, !months.contains(month) { return [] }
            let first = Int64(CeleryTimestamp.daysFromCivil(year: year, month: month, day: 1))
            days = Array(first..<first + Int64(Self.daysInMonth(year: year, month: month)))
        case .weekly:
            // dateutil's first week starts on dtstart's day (which bysetpos counts from).
            let startDay = Self.floorDivide(start + offset, 86_400)
            days = Array(max(unit * 7 + weekOrigin, startDay)..<unit * 7 + weekOrigin + 7)
        case .daily:
            days = [unit]
        case .hourly: days = [Self.floorDivide(unit * 3600, 86_400)]
        case .minutely: days = [Self.floorDivide(unit * 60, 86_400)]
        case .secondly: days = [Self.floorDivide(unit, 86_400)]
        }
        guard let lastDay = days.last, lastDay < 2_932_897 else { return nil }  // 10000-01-01
        var times: [Int64] = []
        // dateutil reckons byweekno and byeaster by the year the period starts in, a week running into January too.
        var masks: YearMasks?
        if weekNumbers != nil || easterOffsets != nil {
            let year = CivilDate(localSeconds: days[0] * 86_400).year
            masks = cache[year] ?? yearMasks(year: year)
            cache[year] = masks
        }
        for day in days {
            let fields = CivilDate(localSeconds: day * 86_400)
            guard dayMatches(fields, in: masks) else { continue }
            switch frequency {
            case .yearly, .monthly, .weekly, .daily:
                for hour in (hours ?? []).sorted() {
                    for minute in (minutes ?? []).sorted() {
                        for second in (seconds ?? []).sorted() {
                            times.append(day * 86_400 + Int64(hour * 3600 + minute * 60 + second))
                        }
                    }
                }
            case .hourly:
                let hourStart = unit * 3600
                let hour = Int((hourStart - day * 86_400) / 3600)
                guard hours?.contains(hour) ?? true else { continue }
                for minute in (minutes ?? []).sorted() {
                    for second in (seconds ?? []).sorted() { times.append(hourStart + Int64(minute * 60 + second)) }
                }
            case .minutely:
                let minuteStart = unit * 60
                let time = CivilDate(localSeconds: minuteStart)
                guard hours?.contains(time.hour) ?? true, minutes?.contains(time.minute) ?? true else { continue }
                for second in (seconds ?? []).sorted() { times.append(minuteStart + Int64(second)) }
            case .secondly:
                let time = CivilDate(localSeconds: unit)
                guard hours?.contains(time.hour) ?? true, minutes?.contains(time.minute) ?? true,
                    seconds?.contains(time.second) ?? true
                else { continue }
                times.append(unit)
            }
        }
        guard let positions else { return times }
        // dateutil's bysetpos: positions in the period's occurrences, those before dtstart included.
        var kept = Set<Int64>()
        for position in positions {
            let index = position > 0 ? position - 1 : times.count + position
            if times.indices.contains(index) { kept.insert(times[index]) }
        }
        return kept.sorted()
    }

    /// dateutil's `rrule.after(time)`: the first occurrence strictly after a Unix time, `nil` when none comes (the
    /// rule's `count` or `until` reached, or none before the year 10000). Occurrences are whole seconds.
    public func next(after time: Double) -> Double? {
        guard canOccur else { return nil }
        let startWall = start + offset
        let firstUnit = unit(of: startWall)
        var index: Int64 = 0
        if count == nil, time > Double(start) {
            // Without a count, jump to the period that holds `time`.
            let wall = Int64(time.rounded(.down)) + offset
            index = (unit(of: wall) - firstUnit) / Int64(interval)
        }
        // dateutil looks up to the year 9999 for a rule its filters never meet; this one looks 400 years (a whole
        // cycle of the calendar's leap years and weekdays) past `time`, as the crontab does, and at most this many
        // periods.
        let horizon = max(Int64(time.rounded(.down)), start) + offset + 146_097 * 86_400
        var budget = 5_000_000
        var found = 0
        var masks: [Int: YearMasks] = [:]
        while budget > 0 {
            let unit = firstUnit + index * Int64(interval)
            guard let times = occurrences(inUnit: unit, masks: &masks), wallStart(ofUnit: unit) <= horizon else { return nil }
            budget -= max(times.count, 1)
            for wall in times where wall >= startWall {
                let unixTime = Double(wall - offset)
                if let until, unixTime > until { return nil }
                found += 1
                if let count, found > count { return nil }
                if unixTime > time { return unixTime }
            }
            // A period below a day that a day, hour or minute filter leaves empty: on to the next day, hour or
            // minute that can match, as dateutil moves on.
            if times.isEmpty, frequency >= .hourly, let boundary = nextBoundary(after: wallStart(ofUnit: unit), masks: &masks) {
                let skipped = Self.floorDivide(self.unit(of: boundary) - firstUnit + Int64(interval) - 1, Int64(interval))
                index = max(index + 1, skipped)
            } else {
                index += 1
            }
        }
        return nil
    }

    /// The year and month of a monthly period.
    static func month(ofUnit unit: Int64) -> (year: Int, month: Int) {
        (Int(floorDivide(unit, 12)), Int(unit - floorDivide(unit, 12) * 12) + 1)
    }

    /// Where a period starts, in wall-clock seconds.
    func wallStart(ofUnit unit: Int64) -> Int64 {
        switch frequency {
        case .hourly: unit * 3600
        case .minutely: unit * 60
        case .secondly: unit
        case .daily: unit * 86_400
        case .weekly: unit * 7 * 86_400 + weekOrigin * 86_400
        case .monthly:
            Int64(CeleryTimestamp.daysFromCivil(year: Self.month(ofUnit: unit).year, month: Self.month(ofUnit: unit).month, day: 1)) * 86_400
        case .yearly: Int64(CeleryTimestamp.daysFromCivil(year: Int(unit), month: 1, day: 1)) * 86_400
        }
    }

    /// For a period below a day starting at `wall` that has no occurrence: the start of the next day when its day
    /// fails the day filters, else of the next hour when its hour fails `byhour`, else of the next minute when its
    /// minute fails `byminute`; `nil` when none of these failed.
    func nextBoundary(after wall: Int64, masks cache: inout [Int: YearMasks]) -> Int64? {
        let date = CivilDate(localSeconds: wall)
        var masks: YearMasks?
        if weekNumbers != nil || easterOffsets != nil {
            masks = cache[date.year] ?? yearMasks(year: date.year)
            cache[date.year] = masks
        }
        if !dayMatches(date, in: masks) { return (date.days + 1) * 86_400 }
        if frequency >= .minutely, let hours, !hours.contains(date.hour) { return Self.floorDivide(wall, 3600) * 3600 + 3600 }
        if frequency == .secondly, let minutes, !minutes.contains(date.minute) { return Self.floorDivide(wall, 60) * 60 + 60 }
        return nil
    }

    /// celery-redbeat's `rrule.is_due(last_run_at)` at `now`: due when the first occurrence after the last run has
    /// come; the time to look again is the time to the occurrence after now (`.infinity` when none comes).
    func isDue(lastRunAt: Double, now: Double) -> (due: Bool, next: Double) {
        guard let next = next(after: lastRunAt) else { return (false, .infinity) }
        guard next <= now else { return (false, next - now) }
        return (true, self.next(after: now).map { max($0 - now, 0) } ?? .infinity)
    }
}
