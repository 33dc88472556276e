import CeleryProtocol
import Testing

@testable import CeleryWorker

@Suite("Gossip as Celery's: alive workers, missed heartbeats, elections")
struct GossipTests {
    @Test("a worker is alive for twice its heartbeat frequency after its last heartbeat; offline ones leave at once")
    func aliveAndLost() {
        var state = GossipState()
        let lines = state.heard("online", from: "a@h", fields: ["freq": 2, "timestamp": 100], now: 100.5)
        #expect(lines.map(\.1) == ["a@h joined the party"])
        #expect(state.heard("heartbeat", from: "a@h", fields: ["freq": 2, "timestamp": 102], now: 102).isEmpty)
        #expect(state.aliveCount(now: 105.9) == 1)
        #expect(state.sweep(now: 105.9).isEmpty)
        #expect(state.sweep(now: 106.1) == ["a@h"])  // 102 + 2 × 2
        #expect(state.peers.isEmpty)
        _ = state.heard("heartbeat", from: "b@h", fields: ["freq": 2, "timestamp": 200], now: 200)
        #expect(state.heard("offline", from: "b@h", fields: [:], now: 201).map(\.1) == ["b@h left"])
        #expect(state.sweep(now: 300).isEmpty)  // it left: never "missed"
        // Without a timestamp a worker is known but never alive, as in Celery.
        _ = state.heard("heartbeat", from: "c@h", fields: ["freq": 2], now: 300)
        #expect(state.aliveCount(now: 300) == 0 && state.sweep(now: 300) == ["c@h"])
    }

    @Test("a clock drift of more than 16 s is logged once per worker, in Celery's words")
    func drift() {
        var state = GossipState()
        let lines = state.heard("heartbeat", from: "d@h", fields: ["freq": 2, "timestamp": 1_000], now: 1_020.25)
        #expect(lines.count == 2 && lines[0].0 == .warning)
        #expect(lines[0].1.hasPrefix("Substantial drift from d@h may mean clocks are out of sync.  Current drift is 20 seconds.  [orig: "))
        #expect(lines[0].1.contains(".250000 recv: ") && lines[0].1.hasSuffix(":40]"))
        #expect(state.heard("heartbeat", from: "d@h", fields: ["freq": 2, "timestamp": 1_002], now: 1_030).isEmpty)
    }

    @Test("an election: decided once as many acknowledgements came as there are alive workers; lowest clock, then process, wins")
    func election() {
        var state = GossipState()
        _ = state.heard("heartbeat", from: "b@h", fields: ["freq": 2, "timestamp": 10], now: 10)
        state.hold("e")
        state.bid("e", .init(clock: 7, process: "b@h.2", topic: "task", action: "x"))
        state.bid("e", .init(clock: 7, process: "a@h.1", topic: "task", action: "y"))
        state.bid("e", .init(clock: 9, process: "0@h.0", topic: "task", action: "z"))
        #expect(state.acknowledged("other", by: "b@h", now: 10, process: "a@h.1") == nil)  // not held here
        #expect(state.acknowledged("e", by: "a@h", now: 10, process: "a@h.1") == .won(id: "e", topic: "task", action: "y"))
        #expect(state.bids.isEmpty && state.acknowledgements.isEmpty)
        state.hold("f")
        state.bid("f", .init(clock: 3, process: "b@h.2", topic: "task", action: "x"))
        #expect(state.acknowledged("f", by: "b@h", now: 10, process: "a@h.1") == .lost(id: "f", leader: "b@h.2"))
    }
}
