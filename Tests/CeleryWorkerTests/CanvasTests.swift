import CeleryProtocol
import Synchronization
import Testing

@testable import CeleryWorker

@Suite("Canvas: signatures and what sending them publishes")
struct CanvasTests {
    /// Captures what a sender publishes.
    final class Outbox: Sendable {
        let sent = Mutex<[(envelope: KombuEnvelope, queue: String, priority: Int)]>([])
        let sizes = Mutex<[String: Int]>([:])

        var sender: CanvasSender {
            CanvasSender(
                publish: { envelope, queue, priority in self.sent.withLock { $0.append((envelope, queue, priority)) } },
                setChordSize: { groupID, size in self.sizes.withLock { $0[groupID] = size } },
                origin: "gen1@host", replyTo: "oid", defaultQueue: "celery", contentType: .json, compression: nil,
                signaturesAreDecoded: true,
                isoformat: { CeleryTimestamp.isoformat(unixSeconds: $0) })
        }

        func message(_ index: Int) throws -> CeleryTaskMessage {
            let envelope = sent.withLock { $0[index].envelope }
            return try CeleryTaskMessage(envelope: KombuEnvelope(decoding: envelope.encoded()), accept: [.json])
        }
    }

    @Test("a signature dict keeps Celery's key order and round-trips")
    func signatureValue() throws {
        let signature = Signature(task: "tasks.mul", args: [4], options: ["task_id": "abc", "reply_to": "oid"])
        let text = String(decoding: CeleryJSON.encode(signature.value), as: UTF8.self)
        #expect(
            text
                == #"{"task": "tasks.mul", "args": [4], "kwargs": {}, "options": {"task_id": "abc", "reply_to": "oid"}, "subtask_type": null, "immutable": false}"#
        )
        #expect(Signature(signature.value) == signature)
        #expect(Signature.list(signature.value) == [signature])
        #expect(Signature.list(.null).isEmpty)
    }

    @Test("the next chain step gets the result first, the rest of the chain, and its parent and root")
    func chainStep() async throws {
        let outbox = Outbox()
        let last = Signature(task: "tasks.add", args: [5], options: ["task_id": "c"])
        let next = Signature(task: "tasks.mul", args: [10], options: ["task_id": "b", "queue": "py"])
        let node = try await outbox.sender.apply(
            next, args: [3], options: ["chain": .array([last.value]), "parent_id": "a", "root_id": "a"])
        #expect(node == [["b", nil], nil])
        let message = try outbox.message(0)
        #expect(message.id == "b" && message.args == [3, 10] && message.parentID == "a" && message.rootID == "a")
        #expect(message.headers["argsrepr"] == "(3, 10)")
        #expect(Signature.list(message.embed.chain) == [last])
        #expect(outbox.sent.withLock { $0[0].queue } == "py")
    }

    @Test("an immutable step keeps its own args and shows them as the list Python decoded")
    func immutable() async throws {
        let outbox = Outbox()
        try await outbox.sender.apply(Signature(task: "tasks.echo", args: [10, 20], immutable: true), args: [3])
        let message = try outbox.message(0)
        #expect(message.args == [10, 20] && message.headers["argsrepr"] == "[10, 20]")
    }

    @Test("a group sends each member with its group id and index; a chord stores its size and embeds the body")
    func groupAndChord() async throws {
        let outbox = Outbox()
        let members = [Signature(task: "tasks.add", args: [1, 1]), Signature(task: "tasks.add", args: [2, 2])]
        let node = try await outbox.sender.apply(.group(members, options: ["task_id": "g"]))
        #expect(node.arrayValue?.first == ["g", nil])
        #expect(try outbox.message(0).groupID == "g" && outbox.message(1).groupIndex == 1)

        let body = Signature(task: "tasks.tsum", options: ["task_id": "body"])
        try await outbox.sender.apply(.chord(members, body: body, options: ["task_id": "c"]))
        #expect(outbox.sizes.withLock { $0 } == ["c": 2])
        let header = try outbox.message(3)
        #expect(header.groupID == "c" && header.groupIndex == 1)
        let embedded = try #require(Signature(header.embed.chord))
        #expect(embedded.options["task_id"] == "body" && embedded.options["group_id"] == "c")
    }

    @Test("a chain signature sends its first task with the rest reversed; the client pre-assigns every id")
    func chainSignature() async throws {
        let outbox = Outbox()
        let steps = ["tasks.add", "tasks.mul", "tasks.echo"].map { Signature(task: $0) }
        let (frozen, lastID) = CeleryClient.freeze(.chain(steps))
        try await outbox.sender.apply(frozen, args: [1])
        let first = try outbox.message(0)
        let rest = Signature.list(first.embed.chain)
        #expect(first.name == "tasks.add" && first.args == [1])
        #expect(rest.map(\.task) == ["tasks.echo", "tasks.mul"])
        #expect(rest.first?.options["task_id"]?.stringValue == lastID)
    }

    @Test("TaskSend writes Celery's headers and properties in Python's order")
    func taskSendOrder() {
        var send = TaskSend(name: "tasks.add", id: "i", args: [1, 2], origin: "gen1@h", replyTo: "r", deliveryTag: "t")
        send.expires = "2026-01-01T00:00:00+00:00"
        send.expirationMilliseconds = 60_000
        send.extraHeaders = ["x-custom": "v"]
        let envelope = send.envelope
        #expect(
            Array(envelope.headers.keys) == [
                "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit", "root_id",
                "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting", "stamped_headers",
                "stamps", "x-custom",
            ])
        #expect(
            Array(envelope.properties.keys) == [
                "correlation_id", "reply_to", "delivery_mode", "expiration", "delivery_info", "priority", "body_encoding",
                "delivery_tag",
            ])
        #expect(envelope.properties["expiration"] == "60000" && envelope.headers["root_id"] == "i")
    }
}
