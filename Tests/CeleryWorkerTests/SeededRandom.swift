/// A fixed-seed source of numbers for the tests that damage input at random: a failure names its round, and the
/// same seed gives it again. Knuth's MMIX linear congruential step, read from its high bits.
struct SeededRandom {
    var state: UInt64

    /// A number in `0..<bound`; 0 when `bound` is not positive.
    mutating func below(_ bound: Int) -> Int {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return bound <= 0 ? 0 : Int((state >> 33) % UInt64(bound))
    }
}
