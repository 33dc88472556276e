import CeleryProtocol
import Foundation
import Testing

@testable import CeleryWorker

@Suite("Mingle's revoked ids in hello, and memsample's sizes")
struct MingleAndMemoryTests {
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

    @Test("memsample's sizes are Python's humanbytes; memdump spreads its samples as Python's sample does")
    func memory() {
        let cases: [(Double, String)] = [
            (0, "0b"), (512, "512b"), (1024, "1KB"), (1536, "1.5KB"), (12.000_000_1 * 1_048_576, "12.0MB"),
            (13_500_000, "12.875MB"), (1000.25 * 1_048_576, "1000.2MB"), (3_221_225_477, "3.0GB"),
            (1.5 * 1_099_511_627_776, "1.5TB"), (123_456_789, "117.74MB"),
        ]
        for (bytes, text) in cases { #expect(WorkerRun.humanBytes(bytes) == text, "\(bytes)") }
        let samples = (0..<25).map(String.init)
        #expect(WorkerRun.spread(samples, count: 10) == ["0", "2", "4", "6", "8", "10", "12", "14", "16", "18"])
        #expect(WorkerRun.spread(Array(samples.prefix(3)), count: 10) == ["0", "1", "2"])
    }

    @Test("revoked stamps gather per header, a single value as a list of one (Celery's maybe_list)")
    func stamps() {
        var revoked = RevokedTasks()
        revoked.revoke(stamps: ["mid": "a", "other": ["x", "y"]])
        revoked.revoke(stamps: ["mid": ["b", 3]])
        #expect(revoked.stamps == ["mid": ["a", "b", 3], "other": ["x", "y"]])
        #expect(RevokedTasks.list("one") == ["one"] && RevokedTasks.list(["a", 1]) == ["a", 1])
    }

    @Test("--statedb: revoked ids and the clock written whole and read back; a foreign file is an error")
    func stateDB() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("statedb-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = StateDB(path: path)
        #expect(try store.load() == StateDB.Contents())
        var revoked = RevokedTasks()
        revoked.insert("old", at: 1_000)
        revoked.insert("new", at: WallClock.now() - 5)
        let contents = StateDB.Contents(revoked: revoked.times(), clock: 42)
        #expect(contents.revoked.keys.sorted() == ["new"])  // an id past its 3 hours is not kept
        try store.save(contents)
        #expect(try store.load() == contents)
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
        try Data("not json".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: CeleryWorkerError.self) { try store.load() }
    }

    @Test("A file replaced whole: the system's reason when it cannot be, and no .tmp file left")
    func fileReplaced() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("replace-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/file"
        let large = [UInt8](repeating: 7, count: 300_000)
        #expect(throws: Never.self) { try FileBytes.replace(path, with: large).get() }
        #expect(try FileBytes.read(path).get() == large)
        #expect(throws: Never.self) { try FileBytes.replace(path, with: [1, 2]).get() }
        #expect(try FileBytes.read(path).get() == [1, 2])
        for (target, reason) in [(directory, "Is a directory"), (directory + "/no/such", "No such file or directory")] {
            guard case .failure(let error) = FileBytes.replace(target, with: [1]) else {
                Issue.record("\(target) was replaced")
                continue
            }
            #expect(error.description == reason)
            #expect(!FileManager.default.fileExists(atPath: target + ".tmp"))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["file"])
    }
}
