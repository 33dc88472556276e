import CeleryProtocol
import Testing

@Suite("Result documents captured from Python's Redis backend")
struct ResultDocumentFixtureTests {
    static var cases: [String] {
        Fixtures.names(suffix: ".result-expected.json")
    }

    @Test("our encoder writes Python's bytes exactly", arguments: cases)
    func byteIdentical(name: String) throws {
        let expected = try Fixtures.json("\(name).result-expected.json")
        let serializer = try #require(CeleryContentType(name: expected["serializer"]?.stringValue ?? ""))
        let file = "\(name).result.\(serializer == .json ? "json" : "msgpack")"
        let stored = try Fixtures.bytes(file)
        let decoded = try serializer.decode(stored)
        #expect(typed(decoded["result"] ?? .null) == expected["result"])

        let status = TaskState(try #require(expected["status"]?.stringValue))
        let result: CeleryValue
        if status == .failure {
            result = CeleryExceptionInfo(type: "ValueError", arguments: ["bad input"], module: "builtins").value
        } else {
            result = try #require(decoded["result"])
        }
        let document = CeleryResultDocument(
            taskID: try #require(expected["task_id"]?.stringValue),
            status: status,
            result: result,
            traceback: expected["traceback"]?.stringValue,
            children: .null,
            dateDone: expected["date_done"]?.stringValue
        )
        #expect(try document.encoded(as: serializer) == stored)
        #expect(CeleryResultDocument.storedStatus(stored, serializer: serializer) == status)
    }

    @Test("a JSON document written straight out is the encoding of its value, member for member")
    func directJSON() throws {
        let documents = [
            CeleryResultDocument(taskID: "id-1", status: .success, result: 5, dateDone: "2026-12-01T00:00:00+00:00"),
            CeleryResultDocument(
                taskID: "id-\u{e9}\"2", status: .failure,
                result: ["exc_type": "ValueError", "exc_message": ["caf\u{e9} \u{1F600}\n"], "exc_module": "builtins"],
                traceback: "Traceback (most recent call last):\n  File \"<swift>\", line 0\n\tValueError: \\x",
                children: [[["c1", .null], .null]], dateDone: "d", groupID: "g", parentID: "p"),
            CeleryResultDocument(taskID: "id-3", status: .started, result: ["pid": 12, "hostname": "celery@h"], children: .null),
            CeleryResultDocument(
                taskID: "id-4", status: .success, result: [1.5, .null, .bytes([0xFF])], groupID: "g",
                extended: ["name": "tasks.add", "args": [1, 2], "kwargs": [:], "worker": "celery@h", "retries": 0, "queue": "q"]),
            CeleryResultDocument(taskID: "id-5", status: .revoked, result: "\u{7F}\u{1F}", children: .null, parentID: "p"),
        ]
        for document in documents {
            #expect(try document.encoded(as: .json) == CeleryJSON.encode(document.value), "\(document.taskID)")
        }
    }

    @Test("date_done is formatted like datetime.isoformat()")
    func dateDone() {
        #expect(CeleryTimestamp.isoformat(unixSeconds: 1_795_566_032.092184) == "2026-11-25T00:20:32.092184+00:00")
        #expect(CeleryTimestamp.isoformat(unixSeconds: 1_893_499_200) == "2030-01-01T12:00:00+00:00")
        // Expected values from Python's datetime.fromtimestamp(t, tz=timezone(timedelta(...))).isoformat().
        #expect(
            CeleryTimestamp.isoformat(unixSeconds: 1_795_566_032.000123, offsetSeconds: 19_800)
                == "2026-11-25T05:50:32.000123+05:30")
        #expect(
            CeleryTimestamp.isoformat(unixSeconds: 1_795_566_032.5, offsetSeconds: -10_800) == "2026-11-24T21:20:32.500000-03:00")
        #expect(CeleryTimestamp.isoformat(unixSeconds: -86_400.5) == "1969-12-30T23:59:59.500000+00:00")
        #expect(CeleryTimestamp.isoformat(unixSeconds: -30_610_224_001) == "0999-12-31T23:59:59+00:00")
        #expect(CeleryTimestamp.isoformat(unixSeconds: 253_402_300_799.25) == "9999-12-31T23:59:59.250000+00:00")
        #expect(CeleryTimestamp.isoformat(unixSeconds: 1_795_566_032.010203) == "2026-11-25T00:20:32.010203+00:00")
        #expect(CeleryTimestamp.parse("2026-11-25T00:20:32.092184+00:00") == 1_795_566_032.092184)
        #expect(CeleryTimestamp.parse("2026-11-25T01:20:34+01:00") == CeleryTimestamp.parse("2026-11-25T00:20:34Z"))
        #expect(CeleryTimestamp.parse("not a date") == nil)
    }

    @Test("an exception renders as Python would show it")
    func exceptionText() {
        let error = CeleryExceptionInfo(type: "ValueError", arguments: ["bad input"], module: "builtins")
        #expect(error.repr == "ValueError('bad input')")
        #expect(error.tracebackLine == "ValueError: bad input")
        let custom = CeleryExceptionInfo(type: "NotRegistered", arguments: ["tasks.nope"], module: "celery.exceptions")
        #expect(custom.tracebackLine == "celery.exceptions.NotRegistered: tasks.nope")
        #expect(CeleryExceptionInfo(type: "E", arguments: [1, 2], module: "m").repr == "E(1, 2)")
    }

    @Test("a copy of a document changes apart from the original")
    func copiesChangeApart() {
        let original = CeleryResultDocument(
            taskID: "t", status: .success, result: 1, dateDone: "2026-11-25T00:20:32.092184+00:00", parentID: "p")
        var copy = original
        copy.taskID = "u"
        copy.result = 2
        copy.status = .failure
        copy.extended["name"] = "n"
        #expect(original.taskID == "t")
        #expect(original.result == 1)
        #expect(original.status == .success)
        #expect(original.extended.isEmpty)
        #expect(original.parentID == "p")
        #expect(copy.taskID == "u")
        #expect(copy.result == 2)
        #expect(copy.status == .failure)
        #expect(copy.extended["name"] == "n")
        #expect(copy.dateDone == original.dateDone)
        #expect(copy.parentID == "p")
    }
}
