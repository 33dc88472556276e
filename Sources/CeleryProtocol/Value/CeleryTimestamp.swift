/// ISO 8601 times as Celery writes and reads them (`eta`, `expires`, `date_done`), with no Foundation calendar.
public enum CeleryTimestamp {
    /// Formats Unix seconds as Python's `datetime.isoformat()` of an aware UTC datetime:
    /// `2026-11-25T00:20:32.092184+00:00`, without a fraction when the microseconds are 0.
    public static func isoformat(unixSeconds: Double, offsetSeconds: Int = 0) -> String {
        // As Python's `datetime.fromtimestamp`: whole seconds and the fraction apart, the microseconds rounded half
        // to even (exact for any year a datetime holds, where seconds times a million would not fit a double).
        let whole = unixSeconds.rounded(.towardZero)
        var seconds = Int64(whole) + Int64(offsetSeconds)
        var fraction = Int64(((unixSeconds - whole) * 1_000_000).rounded(.toNearestOrEven))
        if fraction >= 1_000_000 {
            seconds += 1
            fraction -= 1_000_000
        } else if fraction < 0 {
            seconds -= 1
            fraction += 1_000_000
        }
        var totalMicros = seconds * 1_000_000 + fraction
        let days = totalMicros >= 0 ? totalMicros / 86_400_000_000 : (totalMicros - 86_399_999_999) / 86_400_000_000
        totalMicros -= days * 86_400_000_000
        let micros = Int(totalMicros % 1_000_000)
        let secondsOfDay = Int(totalMicros / 1_000_000)
        let (year, month, day) = civil(fromDays: days)
        return written(
            year: year, month: month, day: day, secondsOfDay: secondsOfDay, microseconds: micros, offsetSeconds: offsetSeconds)
    }

    /// A time as Python's `datetime.isoformat()` writes it: the offset only when there is one (`nil`: a naive time).
    /// Written byte by byte straight into the string: this runs for every stored result (`date_done`). 48 bytes hold
    /// the longest: a 20-character year, `-MM-DDTHH:MM:SS.ffffff`, `+HH:MM`.
    @inline(__always)
    private static func written(year: Int, month: Int, day: Int, secondsOfDay: Int, microseconds micros: Int, offsetSeconds: Int?)
        -> String
    {
        String(unsafeUninitializedCapacity: 48) { text -> Int in
            var count = 0
            @inline(__always) func append(_ byte: UInt8) {
                text[count] = byte
                count += 1
            }
            @inline(__always) func appendTwoDigits(_ value: Int) {
                append(UInt8(ascii: "0") + UInt8(value / 10))
                append(UInt8(ascii: "0") + UInt8(value % 10))
            }
            if (0...9999).contains(year) {
                appendTwoDigits(year / 100)
                appendTwoDigits(year % 100)
            } else {
                for byte in String(year).utf8 { append(byte) }
            }
            append(UInt8(ascii: "-"))
            appendTwoDigits(month)
            append(UInt8(ascii: "-"))
            appendTwoDigits(day)
            append(UInt8(ascii: "T"))
            appendTwoDigits(secondsOfDay / 3600)
            append(UInt8(ascii: ":"))
            appendTwoDigits(secondsOfDay / 60 % 60)
            append(UInt8(ascii: ":"))
            appendTwoDigits(secondsOfDay % 60)
            if micros != 0 {
                append(UInt8(ascii: "."))
                appendTwoDigits(micros / 10_000)
                appendTwoDigits(micros / 100 % 100)
                appendTwoDigits(micros % 100)
            }
            if let offsetSeconds {
                append(offsetSeconds < 0 ? UInt8(ascii: "-") : UInt8(ascii: "+"))
                let offset = abs(offsetSeconds)
                appendTwoDigits(offset / 3600 % 100)
                append(UInt8(ascii: ":"))
                appendTwoDigits(offset / 60 % 60)
            }
            return count
        }
    }

    /// Parses the forms `dateutil.isoparse` accepts from Celery producers: `YYYY-MM-DD[THH:MM[:SS[.ffffff]]]`
    /// followed by `Z`, `±HH:MM`, `±HHMM`, `±HH` or nothing (naive, taken as UTC). Returns Unix seconds.
    public static func parse(_ text: String) -> Double? {
        parse(text, naiveOffset: { _ in 0 })
    }

    /// Parses like ``parse(_:)``; a naive time (no offset) is read in the zone whose UTC offset, in seconds, for a
    /// given Unix time `naiveOffset` returns (Celery with `enable_utc = False` reads naive times in `timezone`).
    public static func parse(_ text: String, naiveOffset: (Double) -> Int) -> Double? {
        guard let parts = parts(text) else { return nil }
        let days = daysFromCivil(year: parts.year, month: parts.month, day: parts.day)
        let wallClock = Double(days * 86_400 + parts.hour * 3600 + parts.minute * 60 + parts.second) + parts.fraction
        return wallClock - Double(parts.offsetSeconds ?? naiveOffset(wallClock))
    }

    /// `text` as Python's `datetime.isoformat()` writes the time ``parse(_:)`` reads in it (what Celery's `call
    /// --eta` and `--expires` send): `YYYY-MM-DDTHH:MM:SS`, the microseconds when they are not 0, the offset when
    /// there is one (`Z` as `+00:00`); naive stays naive. `nil` when it is not such a time.
    public static func pythonIsoformat(_ text: String) -> String? {
        // Python's datetime holds no hour 24, no leap second and no 30 February.
        guard let parts = parts(text), parts.hour < 24, parts.second < 60 else { return nil }
        // A date that is not in the calendar comes back from the day count as another one.
        let days = daysFromCivil(year: parts.year, month: parts.month, day: parts.day)
        guard civil(fromDays: Int64(days)) == (parts.year, parts.month, parts.day) else { return nil }
        return written(
            year: parts.year, month: parts.month, day: parts.day,
            secondsOfDay: parts.hour * 3600 + parts.minute * 60 + parts.second, microseconds: parts.microseconds,
            offsetSeconds: parts.offsetSeconds)
    }

    /// The fields of an ISO 8601 time in the forms ``parse(_:)`` takes; `fraction` is the seconds' fraction and
    /// `microseconds` its first six digits; `offsetSeconds` is `nil` for a naive time.
    private struct Parts {
        var year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0
        var fraction = 0.0
        var microseconds = 0
        var offsetSeconds: Int?
    }

    private static func parts(_ text: String) -> Parts? {
        let bytes = Array(text.utf8)
        var index = 0
        func number(_ width: Int) -> Int? {
            guard index + width <= bytes.count else { return nil }
            var value = 0
            for offset in 0..<width {
                let byte = bytes[index + offset]
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            index += width
            return value
        }
        func consume(_ character: Character) -> Bool {
            guard index < bytes.count, bytes[index] == character.asciiValue else { return false }
            index += 1
            return true
        }
        var parts = Parts()
        guard let year = number(4), consume("-"), let month = number(2), consume("-"), let day = number(2),
            (1...12).contains(month), (1...31).contains(day)
        else { return nil }
        (parts.year, parts.month, parts.day) = (year, month, day)
        if consume("T") || consume(" ") {
            guard let hour = number(2), consume(":"), let minute = number(2) else { return nil }
            (parts.hour, parts.minute) = (hour, minute)
            if consume(":") {
                guard let second = number(2) else { return nil }
                parts.second = second
                if consume(".") || consume(",") {
                    var scale = 0.1
                    var digits = 0
                    while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) {
                        let digit = Int(bytes[index] - UInt8(ascii: "0"))
                        parts.fraction += Double(digit) * scale
                        if digits < 6 { parts.microseconds = parts.microseconds * 10 + digit }
                        scale /= 10
                        digits += 1
                        index += 1
                    }
                    guard digits > 0 else { return nil }
                    for _ in digits..<max(digits, 6) { parts.microseconds *= 10 }
                }
            }
            guard parts.hour <= 24, parts.minute <= 59, parts.second <= 60 else { return nil }
        }
        if consume("Z") || consume("z") {
            parts.offsetSeconds = 0
        } else if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let sign = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            index += 1
            guard let offsetHours = number(2) else { return nil }
            var offsetMinutes = 0
            if consume(":") {
                guard let parsed = number(2) else { return nil }
                offsetMinutes = parsed
            } else if let parsed = number(2) {
                offsetMinutes = parsed
            }
            parts.offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
        }
        guard index == bytes.count else { return nil }
        return parts
    }

    // Howard Hinnant's days-from-civil algorithms.

    /// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
    public static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// The date (year, month, day) that many days from 1970-01-01.
    public static func civil(fromDays days: Int64) -> (Int, Int, Int) {
        let z = Int(days) + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
