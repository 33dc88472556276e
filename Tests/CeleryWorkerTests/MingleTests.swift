import CeleryProtocol
import Testing

@testable import CeleryWorker

@Suite("Mingle: the revoked ids workers exchange in hello")
struct MingleTests {
    @Test("ids go out as Python's LimitedSet data: the pair (monotonic time revoked, id)")
    func entries() {
        var revoked = RevokedTasks()
        revoked.insert("a", at: 1_000_000)
        revoked.insert("b", at: 1_000_050)
        revoked.insert("old", at: 1_000_060 - RevokedTasks.lifetime - 1)
        let entries = revoked.entries(at: 1_000_060, monotonicNow: 500)
        #expect(entries == ["a": [440.0, "a"], "b": [490.0, "b"]])
    }

    @Test("ids come in as a dict of times or pairs (Python 5.3 and 5.7 send pairs) or a plain list")
    func merge() {
        var revoked = RevokedTasks()
        let now = 2_000_000.0
        revoked.merge(["p": [400.0, "p"], "t": 450.0], at: now, monotonicNow: 500)
        // Revoked 100 s and 50 s before, by this machine's monotonic clock: kept until 3 h after that.
        #expect(revoked.revokedAt("p") == now - 100 && revoked.revokedAt("t") == now - 50)
        // A time that cannot be this machine's (ahead of it, or older than an id is kept) counts from now.
        revoked.merge(["ahead": 900.0, "elsewhere": [-20_000.0, "elsewhere"]], at: now, monotonicNow: 500)
        #expect(revoked.revokedAt("ahead") == now && revoked.revokedAt("elsewhere") == now)
        revoked.merge(["listed"], at: now, monotonicNow: 500)
        revoked.merge("not revoked ids", at: now, monotonicNow: 500)
        #expect(revoked.all(at: now).sorted() == ["ahead", "elsewhere", "listed", "p", "t"])
    }
}
