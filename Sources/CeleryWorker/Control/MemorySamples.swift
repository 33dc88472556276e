import CeleryProtocol
import Foundation

extension WorkerRun {
    /// `memsample`: the worker's resident memory now, kept for `memdump` (Python's `sample_mem`, as its worker
    /// answers with psutil installed; without psutil Python answers `None`).
    func memorySample() -> CeleryValue {
        guard let bytes = Host.residentBytes() else { return .null }
        let sample = Self.humanBytes(Double(bytes))
        memorySamples.withLock { $0.append(sample) }
        return .string(sample)
    }

    /// `memdump`: the samples taken since the last dump (at most `samples` of them, spread as Python's `sample`
    /// picks them; Python's worker always shows 10, whatever is asked) and the resident memory now, in Python's
    /// text; the samples are cleared.
    func memoryDump(_ arguments: CeleryObject) -> CeleryValue {
        let limit = max(1, arguments["samples"]?.intValue ?? 10)
        let taken = memorySamples.withLock { samples in
            defer { samples.removeAll() }
            return Self.spread(samples, count: limit)
        }
        guard let bytes = Host.residentBytes() else { return "- rss: (unknown).\n" }
        var text = ""
        if !taken.isEmpty {
            text += "- rss (sample):\n"
            for sample in taken { text += "-    > \(sample),\n" }
        }
        text += "- rss (end): \(Self.humanBytes(Double(bytes))).\n"
        return .string(text)
    }

    /// Python's `celery.utils.debug.sample`: every `len / count`-th item from the first, `count` at most.
    static func spread(_ items: [String], count: Int) -> [String] {
        guard items.count > count else { return items }
        let step = items.count / count
        return (0..<count).map { items[$0 * step] }
    }

    /// Python's `humanbytes`: the largest unit (TB, GB, MB, KB, b) not above the value, with `hfloat`'s five
    /// significant digits (a whole number without a fraction).
    static func humanBytes(_ bytes: Double) -> String {
        let units: [(Double, String)] = [(1_099_511_627_776, "TB"), (1_073_741_824, "GB"), (1_048_576, "MB"), (1_024, "KB")]
        let (divisor, unit) = units.first { bytes >= $0.0 } ?? (1, "b")
        let value = bytes / divisor
        if value == value.rounded(.towardZero) { return "\(Int(value))\(unit)" }
        // `'{0:.5}'.format(value)`: %g with five digits, and a fixed-point number keeps a digit after the point.
        var digits = String(format: "%.5g", value)
        if !digits.contains("."), !digits.contains("e") { digits += ".0" }
        return digits + unit
    }
}
