import CeleryProtocol
import Testing

@Suite("ISO 8601 times as Python writes them")
struct TimestampTests {
    /// Each input with what Python 3.11's `datetime.fromisoformat(input).isoformat()` printed (`nil`: it raised).
    static let python: [(String, String?)] = [
        ("2030-01-01", "2030-01-01T00:00:00"),
        ("2030-01-01 00:00", "2030-01-01T00:00:00"),
        ("2030-01-01T05:06", "2030-01-01T05:06:00"),
        ("2030-01-01T05:06:07", "2030-01-01T05:06:07"),
        ("2030-01-01T05:06:07.5", "2030-01-01T05:06:07.500000"),
        ("2030-01-01T05:06:07.123456", "2030-01-01T05:06:07.123456"),
        ("2030-01-01T05:06:07.000000", "2030-01-01T05:06:07"),
        ("2030-01-01T05:06:07.5Z", "2030-01-01T05:06:07.500000+00:00"),
        ("2030-01-01T05:06:07+01:00", "2030-01-01T05:06:07+01:00"),
        ("2030-01-01T05:06:07-05:30", "2030-01-01T05:06:07-05:30"),
        ("2030-01-01T05:06:07.25+0200", "2030-01-01T05:06:07.250000+02:00"),
        ("2030-01-01T05:06:07,5", "2030-01-01T05:06:07.500000"),
        ("2030-01-01T05:06:07+00:00", "2030-01-01T05:06:07+00:00"),
        ("2030-02-30", nil),
        ("2030-13-01", nil),
        ("tomorrow", nil),
        ("2030-01-01T24:00", nil),
    ]

    @Test("pythonIsoformat writes what Python's isoformat() writes for the time fromisoformat() reads", arguments: python)
    func pythonIsoformat(input: String, expected: String?) {
        #expect(CeleryTimestamp.pythonIsoformat(input) == expected)
    }

    @Test("the time it writes is the time parse reads")
    func sameInstant() {
        for (input, written) in Self.python {
            guard let written else { continue }
            #expect(CeleryTimestamp.parse(written) == CeleryTimestamp.parse(input), "\(input)")
        }
    }
}
