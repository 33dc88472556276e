import CeleryProtocol
import Testing

@testable import CeleryWorker

/// The event receiver's clock and time adjustment and the dumper's lines, against what Celery 5.7's own
/// `EventReceiver.event_from_message` and `celery.events.dumper.Dumper` made of the same messages
/// (Tests/Fixtures/event-dump.json, written by Interop/capture_event_dump.py).
@Suite("celery events --dump (Celery's receiver and dumper)")
struct EventDumpTests {
    static let golden = fixtureObject("event-dump.json")

    @Test("every message of three runs: Celery's lines and clock, at three UTC offsets")
    func goldenRuns() throws {
        let runs = try #require(Self.golden["runs"]?.arrayValue)
        #expect(runs.count == 3)
        var lines = 0
        for run in runs {
            let object = try #require(run.objectValue)
            var reception = EventReception(utcOffsetHours: try #require(object["utcoffset_here"]?.doubleValue))
            var dump = EventDump()
            for message in try #require(object["messages"]?.arrayValue) {
                let fields = try #require(message.objectValue)
                let body = try CeleryJSON.decode(Array(try #require(fields["body"]?.stringValue).utf8))
                let now = try #require(fields["now"]?.doubleValue)
                var printed: [String] = []
                for event in body.arrayValue ?? [body] {
                    let fields = try #require(event.objectValue)
                    let maybeReceived = reception.received(fields, now: now)
                    let received = try #require(maybeReceived)
                    let maybeLine = dump.line(for: received)
                    let line = try #require(maybeLine)
                    printed += line.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
                }
                let expected = try #require(fields["lines"]?.arrayValue).compactMap(\.stringValue)
                #expect(printed == expected, "\(body)")
                #expect(reception.clock == Int64(try #require(fields["clock"]?.intValue)))
                lines += expected.count
            }
        }
        #expect(lines > 60)
    }

    @Test("what Python's dumper raises on is refused; a task name is forgotten after 4095 newer ones")
    func refusalsAndMemory() throws {
        var reception = EventReception(utcOffsetHours: 0)
        let typeless = reception.received(["hostname": "a@b", "timestamp": 1], now: 2)
        #expect(typeless == nil)
        var dump = EventDump()
        var lines = [
            dump.line(for: ["type": "worker-online", "hostname": "a@b"]),  // no timestamp
            dump.line(for: ["type": "task-started", "hostname": "a@b", "timestamp": 1]),  // no uuid
            dump.line(for: ["type": "task-received", "hostname": "a@b", "timestamp": 1, "uuid": "u", "name": "t"]),  // no args
        ]
        #expect(lines == [nil, nil, nil])
        let bare = dump.line(for: ["type": "worker-online", "hostname": "a@b", "timestamp": 0])
        #expect(bare == "a@b [1970-01-01 00:00:00+00:00] started ")
        func received(_ id: String) -> CeleryObject {
            ["type": "task-received", "hostname": "h", "timestamp": 1, "uuid": .string(id), "name": "t", "args": "()", "kwargs": "{}"]
        }
        func started(_ id: String) -> CeleryObject { ["type": "task-started", "hostname": "h", "timestamp": 1, "uuid": .string(id)] }
        _ = dump.line(for: received("first"))
        _ = dump.line(for: received("second"))
        for index in 0..<(EventDump.taskNameLimit - 2) { _ = dump.line(for: received("filler\(index)")) }
        // "first" is recalled, so "second" is now the least recently used: the next new id pushes it out.
        lines = [dump.line(for: started("first"))]
        _ = dump.line(for: received("newest"))
        lines += [dump.line(for: started("second")), dump.line(for: started("first"))]
        #expect(
            lines == [
                "h [1970-01-01 00:00:01+00:00] task started t(first) args=() kwargs={} ", "h [1970-01-01 00:00:01+00:00] task started  ",
                "h [1970-01-01 00:00:01+00:00] task started t(first) args=() kwargs={} ",
            ])
    }
}
