/// An integer outside the 64-bit ranges, which Python's `int` holds and JSON carries (`2**70` sent with `.delay()`),
/// kept as its decimal digits.
///
/// The worker does no arithmetic on it: it reads such an integer from JSON, hands it to a task as
/// ``CeleryValue/bigInt(_:)``, and writes it back as Python would. Like Python 3.11 and later, it holds at most
/// ``maximumDigits`` digits: Python neither reads nor writes a longer integer in decimal (`int_max_str_digits`).
/// msgpack has no form for it: encoding one fails as Python's msgpack does (`Integer value out of range`).
public struct CeleryBigInt: Sendable, Hashable, CustomStringConvertible {
    /// Python's default `sys.get_int_max_str_digits()`: the most digits it reads or writes in decimal.
    public static let maximumDigits = 4300

    /// The decimal digits, `-` first when negative: what Python's `str()` writes for the integer.
    public let description: String

    /// The integer that `text` writes in Python's form (an optional `-`, then digits without a leading zero), if it
    /// lies outside both `Int64`'s and `UInt64`'s range and has at most ``maximumDigits`` digits; `nil` otherwise.
    public init?(_ text: String) {
        let negative = text.utf8.first == UInt8(ascii: "-")
        let digits = negative ? text.utf8.dropFirst() : text.utf8[...]
        guard Self.isOutsideSixtyFourBits(digits, negative: negative), digits.count <= Self.maximumDigits else { return nil }
        description = text
    }

    /// Whether the integer is below zero.
    public var isNegative: Bool { description.utf8.first == UInt8(ascii: "-") }

    /// The nearest `Double`, as Python's `float()` gives it; `nil` beyond `Double`'s range, where Python's raises
    /// `OverflowError`.
    public var doubleValue: Double? {
        guard let value = Double(description), value.isFinite else { return nil }
        return value
    }

    /// Whether `digits` (without their sign) are a decimal integer without a leading zero beyond `UInt64.max`, or,
    /// `negative`, beyond `Int64.min`'s magnitude.
    static func isOutsideSixtyFourBits(_ digits: some Collection<UInt8>, negative: Bool) -> Bool {
        guard let first = digits.first, first != UInt8(ascii: "0"),
            digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) })
        else { return false }
        let limit = Array((negative ? String(Int64.min).dropFirst() : Substring(String(UInt64.max))).utf8)
        return digits.count > limit.count || (digits.count == limit.count && limit.lexicographicallyPrecedes(digits))
    }

    /// An integer the JSON parser already checked.
    init(checked text: String) {
        description = text
    }
}
