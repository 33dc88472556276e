import CeleryProtocol
import Testing

@testable import CeleryWorker

@Suite("Rate limits as Celery parses and spaces them")
struct TaskLimitsTests {
    @Test("rate strings: per second, minute, hour, bare numbers, off")
    func parsing() throws {
        #expect(try RateLimit.perSecond("10/s") == 10)
        #expect(try RateLimit.perSecond("120/m") == 2)
        #expect(try RateLimit.perSecond("7200/h") == 2)
        #expect(try RateLimit.perSecond("4") == 4)
        #expect(try RateLimit.perSecond(" 1.5 / s ") == 1.5)
        #expect(try RateLimit.perSecond("0") == nil)
        #expect(try RateLimit.perSecond("") == nil)
        #expect(try RateLimit.perSecond(CeleryValue.int(3)) == 3)
        #expect(try RateLimit.perSecond(CeleryValue.null) == nil)
        #expect(throws: CeleryWorkerError.self) { try RateLimit.perSecond("ten/s") }
        #expect(throws: CeleryWorkerError.self) { try RateLimit.perSecond("10/d") }
        #expect(throws: CeleryWorkerError.self) { try RateLimit.perSecond("-1/s") }
    }

    @Test("a bucket of one token: the first task at once, then 1/rate apart; a new rate resets the bucket")
    func schedule() {
        let task = RegisteredTask(name: "t", options: TaskOptions(rateLimit: "2/s")) { _ in .null }
        let free = RegisteredTask(name: "u", options: TaskOptions()) { _ in .null }
        var limits = TaskLimits()
        #expect(limits.reserveStart(for: free, now: 100) == nil)
        #expect(limits.reserveStart(for: task, now: 100) == 100)
        #expect(limits.reserveStart(for: task, now: 100) == 100.5)
        #expect(limits.reserveStart(for: task, now: 100.2) == 101)
        #expect(limits.reserveStart(for: task, now: 105) == 105)
        #expect(limits.rateText(for: task) == "2/s" && limits.rateText(for: free) == nil)
        limits.setRate(nil, text: nil, for: "t")
        #expect(limits.reserveStart(for: task, now: 105) == nil)
        #expect(limits.rateText(for: task) == nil)
        limits.setRate(1, text: "1", for: "u")
        #expect(limits.rateText(for: free) == "1")
        #expect(limits.reserveStart(for: free, now: 105) == 105)
        #expect(limits.reserveStart(for: free, now: 105) == 106)
    }
}
