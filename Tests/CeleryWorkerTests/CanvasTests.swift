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
        let savedGroups = Mutex<[String: CeleryValue]>([:])

        var sender: CanvasSender {
            CanvasSender(
                publish: { envelope, queue, priority in self.sent.withLock { $0.append((envelope, queue, priority)) } },
                route: { exchange, routingKey, _ in exchange == "bound" ? ["\(routingKey)-a", "\(routingKey)-b"] : [] },
                setChordSize: { groupID, size in self.sizes.withLock { $0[groupID] = size } },
                saveGroup: { groupID, result in self.savedGroups.withLock { $0[groupID] = result } },
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

    @Test("a step with a named exchange goes to every queue bound to it, as its own exchange and routing key; a queue wins")
    func namedExchange() async throws {
        let outbox = Outbox()
        // As Celery's signature options: a named exchange, or kombu's Exchange as a dict with its type.
        let step = Signature(task: "tasks.add", args: [1], options: ["task_id": "x", "exchange": "bound", "routing_key": "k"])
        _ = try await outbox.sender.apply(step)
        let declared = Signature(task: "tasks.add", options: ["exchange": ["name": "bound", "type": "topic"], "routing_key": "t"])
        _ = try await outbox.sender.apply(declared)
        #expect(outbox.sent.withLock { $0.map(\.queue) } == ["k-a", "k-b", "t-a", "t-b"])
        let envelope = outbox.sent.withLock { $0[0].envelope }
        #expect(envelope.deliveryInfo.exchange == "bound" && envelope.deliveryInfo.routingKey == "k")
        #expect(try outbox.message(1).id == "x")
        let queued = Signature(task: "tasks.add", options: ["queue": "q", "exchange": "bound", "routing_key": "k"])
        _ = try await outbox.sender.apply(queued)
        #expect(outbox.sent.withLock { $0.last?.queue } == "q")
        await #expect(throws: CeleryWorkerError.self) {
            try await outbox.sender.apply(Signature(task: "tasks.add", options: ["exchange": "unbound", "routing_key": "k"]))
        }
        #expect(outbox.sent.withLock { $0.count } == 5)
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

    @Test("a nested chord header: each result that completes it carries the chord; the size counts them; the header is saved")
    func nestedChordHeader() async throws {
        let outbox = Outbox()
        func task(_ name: String) -> Signature { Signature(task: name, options: ["task_id": .string(name)]) }
        let header: [Signature] = [
            .chain([task("a"), task("b")]),
            .group([task("c"), task("d")]),
            .chain([task("e"), .group([task("f"), task("g")], options: ["task_id": "fg"])]),
            .chord([task("h"), task("i")], body: task("j"), options: ["task_id": "hi"]),
        ]
        try await outbox.sender.apply(.chord(header, body: task("body"), options: ["task_id": "outer"]), args: [2])
        // Python unrolls the nested group last member first; the chain into a group counts its two members.
        #expect(outbox.sizes.withLock { $0 } == ["outer": 6, "hi": 2])
        let sent = try (0..<outbox.sent.withLock { $0.count }).map { try outbox.message($0) }
        #expect(sent.map(\.name) == ["a", "d", "c", "e", "h", "i"])
        #expect(sent.allSatisfy { $0.args.first == 2 })
        // A chain's first step does not complete the chord: its last step does, with the member's index.
        #expect(sent[0].isChordPart == false && sent[0].groupID == nil)
        let b = try #require(Signature.list(sent[0].embed.chain).first)
        #expect(b.task == "b" && b.options["group_id"] == "outer" && b.options["group_index"] == 0)
        #expect(Signature(b.options["chord"] ?? .null)?.options["task_id"] == "body")
        #expect(sent[1].groupID == "outer" && sent[1].groupIndex == 1 && sent[2].groupIndex == 2 && sent[2].isChordPart)
        // The chain's last step is a group: its members carry the outer chord, each with its index in the group.
        let fg = try #require(Signature.list(sent[3].embed.chain).first)
        #expect(fg.subtaskType == "group" && fg.options["task_id"] == "fg" && fg.options["group_index"] == 3)
        #expect(fg.tasks.map { $0.options["group_id"] } == ["outer", "outer"] && fg.tasks.map { $0.options["group_index"] } == [0, 1])
        // The inner chord counts as its body, which carries the outer chord.
        #expect(sent[4].groupID == "hi")
        let innerBody = try #require(Signature(sent[4].embed.chord))
        #expect(innerBody.task == "j" && innerBody.options["group_id"] == "outer" && innerBody.options["group_index"] == 4)
        #expect(Signature(innerBody.options["chord"] ?? .null)?.task == "body")
        let saved = try #require(outbox.savedGroups.withLock { $0["outer"] })
        #expect(
            saved == [
                ["outer", nil],
                [
                    [["b", nil], nil], [["d", nil], nil], [["c", nil], nil], [["fg", nil], [[["f", nil], nil], [["g", nil], nil]]],
                    [["j", nil], nil],
                ],
            ])
    }

    @Test("a chain step that is a group followed by a step is sent as a chord with that step as its body")
    func groupThenStepInAChain() async throws {
        let outbox = Outbox()
        let members = [Signature(task: "tasks.mul", args: [2]), Signature(task: "tasks.mul", args: [3])]
        let steps: [Signature] = [
            Signature(task: "tasks.add", args: [1, 2], options: ["task_id": "first"]),
            .chain([.group(members, options: ["task_id": "g"]), Signature(task: "tasks.tsum", options: ["task_id": "sum"])]),
        ]
        #expect(CanvasSender.prepared(steps).map(\.subtaskType) == [nil, "chord"])
        try await outbox.sender.apply(.chain(steps))
        let next = try #require(Signature.list(try outbox.message(0).embed.chain).first)
        #expect(next.subtaskType == "chord" && next.options["task_id"] == "g" && next.chordParts?.body.task == "tasks.tsum")
        // Applied (as the worker applies the next step), the group's members carry the chord; the sum runs once.
        try await outbox.sender.apply(next, args: [3])
        #expect(outbox.sizes.withLock { $0 } == ["g": 2])
        let sent = try (1...2).map { try outbox.message($0) }
        #expect(sent.map(\.args) == [[3, 2], [3, 3]] && sent.allSatisfy { $0.groupID == "g" && $0.isChordPart })
        #expect(outbox.sent.withLock { $0.count } == 3)
    }

    @Test("Task.replace: the replacement takes this task's id, chord, group, root, callbacks and the rest of its chain")
    func replacement() throws {
        let embed = CeleryTaskMessage.Embed(
            callbacks: [Signature(task: "cb").value], errbacks: [Signature(task: "eb").value],
            chain: [Signature(task: "last").value, Signature(task: "next").value], chord: Signature(task: "body").value)
        var send = TaskSend(name: "tasks.replacer", id: "me", embed: embed, origin: "gen1@h", replyTo: "r", deliveryTag: "t")
        send.groupID = "g"
        send.groupIndex = 2
        send.rootID = "root"
        send.replacedTaskNesting = 1
        let message = try CeleryTaskMessage(envelope: KombuEnvelope(decoding: send.envelope.encoded()), accept: [.json])
        let group = Signature.group([Signature(task: "a"), Signature(task: "b")])
        let replaced = try WorkerRun.replacement(for: message, with: .chain([Signature(task: "x"), group]))
        #expect(replaced.subtaskType == "chain" && replaced.tasks.map(\.task) == ["celery.chain", "next", "last"])
        #expect(replaced.tasks.dropFirst().allSatisfy { $0.options["replaced_task_nesting"] == 2 })
        let inner = replaced.tasks[0]
        #expect(inner.options["group_id"] == "g" && inner.options["group_index"] == 2 && inner.options["root_id"] == "root")
        #expect(inner.options["chord"] == Signature(task: "body").value && inner.options["replaced_task_nesting"] == 2)
        // The chain's last step, a group, became a chord into celery.accumulate, whose body takes this task's id and
        // callback; errbacks go to every step.
        let (x, chord) = (inner.tasks[0], inner.tasks[1])
        #expect(x.options["link_error"] == [Signature(task: "eb").value] && x.options["link"] == nil)
        let body = try #require(chord.chordParts?.body)
        #expect(chord.subtaskType == "chord" && chord.chordParts?.header.map(\.task) == ["a", "b"])
        #expect(body.task == "celery.accumulate" && body.kwargs["index"] == 0 && body.options["task_id"] == "me")
        #expect(body.options["link"] == [Signature(task: "cb").value] && body.options["link_error"] == [Signature(task: "eb").value])

        let alone = try WorkerRun.replacement(for: message, with: Signature(task: "y", options: ["task_id": "own"]))
        #expect(alone.tasks.first?.options["task_id"] == "own")  // Python's freeze keeps an id the signature has
        #expect(throws: PythonException.self) {
            try WorkerRun.replacement(for: message, with: Signature(task: "y", options: ["chord": Signature(task: "z").value]))
        }
        #expect(throws: PythonException.self) { try WorkerRun.replacement(for: message, with: .chain([])) }
    }

    @Test("a chord header of tasks and chains is not saved")
    func flatChordHeaderIsNotSaved() async throws {
        let outbox = Outbox()
        let header: [Signature] = [.chain([Signature(task: "a"), Signature(task: "b")]), Signature(task: "c")]
        try await outbox.sender.apply(.chord(header, body: Signature(task: "body"), options: ["task_id": "g"]))
        #expect(outbox.sizes.withLock { $0 } == ["g": 2] && outbox.savedGroups.withLock { $0.isEmpty })
    }

    @Test("joining a completed chord: parts in order, or the saved header's shape; failures as Python words them")
    func chordJoin() {
        func part(_ id: String, _ state: TaskState = .success, _ result: CeleryValue) -> ChordCompletion.Part {
            ChordCompletion.Part(taskID: id, state: state, result: result)
        }
        let boom: CeleryValue = ["exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"]
        let plain = ChordCompletion(parts: [part("a", .success, 1), part("b", .success, 2)], token: "t")
        #expect(plain.join() == .results([1, 2]))
        let failedPlain = ChordCompletion(parts: [part("a", .success, 1), part("b", .failure, boom)], token: "t")
        #expect(failedPlain.join() == .failed(chordError("Dependency b raised ValueError('boom')")))

        let saved: CeleryValue = ["g", [[["fg", ["e", nil]], [[["f", nil], nil], [["g2", nil], nil]]], [["j", nil], nil]]]
        var nested = ChordCompletion(
            parts: [part("f", .success, 6), part("j", .success, 7), part("g2", .success, 9)], token: "t", savedHeader: saved)
        #expect(nested.missingTaskIDs().isEmpty)
        #expect(nested.join() == .results([[6, 9], 7]))
        nested.parts[2] = part("g2", .failure, ["exc_type": "ValueError", "exc_message": "old style", "exc_module": "builtins"])
        #expect(nested.join() == .failed(chordError("Join error: ValueError('old style')")))

        var missing = ChordCompletion(parts: [part("f", .success, 6), part("j", .success, 7)], token: "t", savedHeader: saved)
        #expect(missing.missingTaskIDs() == ["g2"])
        #expect(missing.join() == .failed(chordError("Join error: TimeoutError('The operation timed out.')")))
        missing.storedResults = [part("g2", .success, 9)]
        #expect(missing.join() == .results([[6, 9], 7]))
        missing.storedResults = [part("g2", .started, .null)]
        #expect(missing.join() == .failed(chordError("Join error: TimeoutError('The operation timed out.')")))
    }

    private func chordError(_ message: String) -> CeleryExceptionInfo {
        CeleryExceptionInfo(type: "ChordError", arguments: [.string(message)], module: "celery.exceptions")
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
    func taskSendOrder() throws {
        var send = TaskSend(name: "tasks.add", id: "i", args: [1, 2], origin: "gen1@h", replyTo: "r", deliveryTag: "t")
        send.expires = "2026-01-01T00:00:00+00:00"
        send.expirationMilliseconds = 60_000
        send.extraHeaders = ["x-custom": "v"]
        let envelope = try send.envelope
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
