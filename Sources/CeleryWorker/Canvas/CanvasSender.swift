import CeleryProtocol
import Foundation

/// Sends signatures as Python's `Signature.apply_async` does: a task is one message; a group sends each member
/// with `group` / `group_index`; a chain sends its first task with the rest (reversed) in the `chain` embed; a
/// chord stores its size in the result backend and sends its header members with the body in the `chord` embed.
///
/// Used by the worker (callbacks, chain steps, errbacks, chord bodies) and by ``CeleryClient``.
struct CanvasSender: Sendable {
    /// Pushes an envelope to a queue at a priority.
    let publish: @Sendable (KombuEnvelope, _ queue: String, _ priority: Int) async throws(CeleryWorkerError) -> Void
    /// The queues bound to a named exchange for a routing key (``RedisBroker/boundQueues(exchange:routingKey:topic:)``).
    let route: @Sendable (_ exchange: String, _ routingKey: String, _ topic: Bool) async throws(CeleryWorkerError) -> [String]
    /// Writes a chord's size before its header is sent.
    let setChordSize: @Sendable (_ groupID: String, _ size: Int) async throws(CeleryWorkerError) -> Void
    /// Saves a chord header whose results include groups (Celery's `apply_chord`).
    let saveGroup: @Sendable (_ groupID: String, _ result: CeleryValue) async throws(CeleryWorkerError) -> Void
    /// `gen<pid>@<host>`.
    let origin: String
    /// The sender's oid, used as `reply_to` when a signature names none.
    let replyTo: String
    /// Where a signature without a `queue` option goes (`task_default_queue`).
    let defaultQueue: String
    /// `task_routes`: options by task name, under a signature's own.
    var routes = TaskRoutes()
    /// The serializer of a signature without a `serializer` option.
    let contentType: CeleryContentType
    /// How a signature without a `compression` option is compressed (`task_compression`).
    let compression: KombuCompression?
    /// The priority of a task sent without one (in its options or from a route): the parent task's with
    /// `task_inherit_parent_priority`, else `task_default_priority`; `nil` sends 0, as kombu does.
    var fallbackPriority: Int?
    /// Signatures decoded from a message keep their args as a list, so Python shows an immutable one's `argsrepr` as
    /// a list; signatures built in Swift show tuples, as a Python client's do.
    let signaturesAreDecoded: Bool
    /// Formats a Unix time in the app's time zone (countdown and numeric expires become ISO times).
    let isoformat: @Sendable (Double) -> String

    static func newID() -> String { UUID().uuidString.lowercased() }

    /// Applies `signature` with `args` in front of its own (unless it is immutable) and `options` over its own
    /// (its own `group_id` is kept, as in Celery's `_merge`). Returns the node Celery lists in the parent's
    /// `children`: `[[id, null], null]` for a task, `[[group id, null], [members…]]` for a group.
    @discardableResult
    func apply(_ signature: Signature, args: [CeleryValue] = [], options: CeleryObject = [:]) async throws(CeleryWorkerError)
        -> CeleryValue
    {
        var merged = signature.options
        for (key, value) in options where !(key == "group_id" && merged[key] != nil) { merged[key] = value }
        switch signature.subtaskType {
        case "group": return try await applyGroup(signature.tasks, args: args, options: merged)
        case "chain": return try await applyChain(signature.tasks, args: args, options: merged)
        case "chord":
            guard let parts = signature.chordParts else {
                throw CeleryWorkerError(code: .invalidConfiguration, message: "a celery.chord signature without a body")
            }
            return try await applyChord(header: parts.header, body: parts.body, args: args, options: merged)
        default:
            return try await applyTask(signature, args: args, options: merged)
        }
    }

    private func applyTask(_ signature: Signature, args: [CeleryValue], options: CeleryObject) async throws(CeleryWorkerError)
        -> CeleryValue
    {
        let options = routes.routed(options, task: signature.task)
        let id = options["task_id"]?.stringValue ?? Self.newID()
        var queue = defaultQueue
        // A named exchange without a queue: kombu's `_lookup` of the queues bound to it (a direct exchange unless
        // `exchange_type` says topic, as kombu takes an exchange its producer did not declare).
        var exchange: (name: String, routingKey: String, topic: Bool)?
        switch options["queue"] {
        case .string(let name)?: queue = name
        case .object(let declared)?: queue = declared["name"]?.stringValue ?? queue
        default:
            let named = options["exchange"]?.stringValue ?? options["exchange"]?["name"]?.stringValue
            if let named, !named.isEmpty {
                let type = options["exchange_type"]?.stringValue ?? options["exchange"]?["type"]?.stringValue
                exchange = (named, options["routing_key"]?.stringValue ?? "", type == "topic")
            } else if let key = options["routing_key"]?.stringValue {
                queue = key
            }
        }
        var send = TaskSend(
            name: signature.task, id: id, args: signature.immutable ? signature.args : args + signature.args,
            kwargs: signature.kwargs,
            embed: CeleryTaskMessage.Embed(
                callbacks: Self.signatureList(options["link"]), errbacks: Self.signatureList(options["link_error"]),
                chain: options["chain"] ?? .null, chord: options["chord"] ?? .null),
            origin: origin, replyTo: options["reply_to"]?.stringValue ?? replyTo, routingKey: queue,
            contentType: options["serializer"]?.stringValue.flatMap(CeleryContentType.init(name:)) ?? contentType,
            deliveryTag: Self.newID())
        switch options["compression"] {
        case .string(let name)?:
            guard let method = KombuCompression(name: name) else {
                throw CeleryWorkerError(
                    code: .invalidConfiguration, message: "unknown compression '\(name)': \(KombuCompression.supportedNames)")
            }
            try method.requireAvailable()
            send.compression = method
        default: send.compression = compression
        }
        send.argsShownAsList = signature.immutable && signaturesAreDecoded
        send.argsRepr = options["argsrepr"]?.stringValue
        send.kwargsRepr = options["kwargsrepr"]?.stringValue
        send.shadow = options["shadow"]?.stringValue
        let now = WallClock.now()
        if let countdown = options["countdown"]?.doubleValue {
            send.eta = isoformat(now + countdown)
        } else if let eta = options["eta"]?.stringValue {
            send.eta = eta
        }
        if let seconds = options["expires"]?.doubleValue {
            send.expires = isoformat(now + seconds)
            send.expirationMilliseconds = Int(seconds * 1000)
        } else if let expires = options["expires"]?.stringValue {
            send.expires = expires
            if let time = CeleryTimestamp.parse(expires) { send.expirationMilliseconds = Int((time - now) * 1000) }
        }
        send.groupID = options["group_id"]?.stringValue
        send.groupIndex = options["group_index"]?.intValue
        send.timeLimit = [options["time_limit"] ?? .null, options["soft_time_limit"] ?? .null]
        send.rootID = options["root_id"]?.stringValue
        send.parentID = options["parent_id"]?.stringValue
        send.ignoreResult = options["ignore_result"] ?? false
        send.replacedTaskNesting = options["replaced_task_nesting"]?.intValue ?? 0
        send.extraHeaders = options["headers"]?.objectValue ?? [:]
        send.priority = options["priority"]?.intValue ?? fallbackPriority
        guard let exchange else {
            try await publish(try CeleryWorkerError.encoding { () throws(CeleryProtocolError) in try send.envelope }, queue, send.priority ?? 0)
            return [[.string(id), .null], .null]
        }
        send.exchange = exchange.name
        send.routingKey = exchange.routingKey
        let queues = try await route(exchange.name, exchange.routingKey, exchange.topic)
        guard !queues.isEmpty else {
            // kombu's Redis transport drops such a message without a word; the sender is told instead.
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "no queue is bound to the \(exchange.topic ? "topic" : "direct") exchange '\(exchange.name)' for routing key "
                    + "'\(exchange.routingKey)': task \(signature.task)[\(id)] was not sent")
        }
        let envelope = try CeleryWorkerError.encoding { () throws(CeleryProtocolError) in try send.envelope }
        for queue in queues { try await publish(envelope, queue, send.priority ?? 0) }
        return [[.string(id), .null], .null]
    }

    private func applyGroup(_ members: [Signature], args: [CeleryValue], options: CeleryObject) async throws(CeleryWorkerError)
        -> CeleryValue
    {
        let groupID = options["task_id"]?.stringValue ?? Self.newID()
        var shared = options
        shared["task_id"] = nil
        var children: [CeleryValue] = []
        for (index, member) in members.enumerated() {
            var memberOptions = shared
            memberOptions["group_id"] = .string(groupID)
            memberOptions["group_index"] = .int(Int64(index))
            children.append(try await apply(member, args: args, options: memberOptions))
        }
        return [[.string(groupID), .null], .array(children)]
    }

    private func applyChain(_ steps: [Signature], args: [CeleryValue], options: CeleryObject) async throws(CeleryWorkerError)
        -> CeleryValue
    {
        let steps = Self.prepared(steps)
        guard let first = steps.first else { return .null }
        var rest = steps.dropFirst().map { step in
            var frozen = step
            if frozen.options["task_id"] == nil { frozen.options["task_id"] = .string(Self.newID()) }
            if frozen.options["reply_to"] == nil { frozen.options["reply_to"] = .string(replyTo) }
            return frozen
        }
        var firstOptions = options
        if !rest.isEmpty {
            // The chain's result is its last step's: that step joins the chain's group or chord (`prepare_steps`
            // freezes the last task with them), not the first.
            for key in ["group_id", "group_index", "chord"] {
                guard let value = firstOptions.removeValue(forKey: key) else { continue }
                if key != "group_id" || rest[rest.count - 1].options[key] == nil { rest[rest.count - 1].options[key] = value }
            }
            firstOptions["chain"] = .array(rest.reversed().map(\.value))
        }
        return try await apply(first, args: args, options: firstOptions)
    }

    /// Python's `chord.run`: the body is frozen with the chord's group id; each header member is frozen so that
    /// the results that complete it carry the group id, the body and the member's index
    /// (``frozenForChord(_:groupID:body:index:)``); the size counts those results; a header with a group among its
    /// results is saved (`apply_chord`); then the header is sent.
    private func applyChord(header: [Signature], body: Signature, args: [CeleryValue], options: CeleryObject)
        async throws(CeleryWorkerError) -> CeleryValue
    {
        let groupID = options["task_id"]?.stringValue ?? Self.newID()
        var frozenBody = body
        if frozenBody.options["task_id"] == nil { frozenBody.options["task_id"] = .string(Self.newID()) }
        if frozenBody.options["reply_to"] == nil { frozenBody.options["reply_to"] = .string(replyTo) }
        // Python's `_body_options`: the chord's own chain, group, chord, index and nesting go to its body, whose
        // result is the chord's.
        for key in ["chain", "root_id", "group_id", "chord", "group_index", "replaced_task_nesting"] where options[key] != nil {
            frozenBody.options[key] = options[key]
        }
        // Otherwise the header's group: `Signature.freeze` keeps a group id the body already has (a chord in another
        // chord's header keeps the outer one).
        if frozenBody.options["group_id"] == nil { frozenBody.options["group_id"] = .string(groupID) }
        let members = Self.unrolled(header).enumerated().map { index, member in
            Self.frozenForChord(member, groupID: groupID, body: frozenBody.value, index: index)
        }
        try await setChordSize(groupID, members.reduce(0) { $0 + $1.size })
        if members.contains(where: { $0.result.arrayValue?.last?.arrayValue != nil }) {
            try await saveGroup(groupID, [[.string(groupID), .null], .array(members.map(\.result))])
        }
        var shared = options
        for key in ["task_id", "chain", "link", "link_error", "chord", "group_id", "group_index"] { shared[key] = nil }
        var children: [CeleryValue] = []
        for member in members {
            children.append(try await apply(member.signature, args: args, options: shared))
        }
        return [[.string(groupID), .null], .array(children)]
    }

    /// A chord header member after Python's `freeze(group_id=, chord=, group_index=)`:
    /// - a task gets the chord's group id (unless it has one), the body and the index, and counts 1;
    /// - a chain (nested chains inlined) passes them to its last step, and counts as that step;
    /// - a group (the last step of a chain: a group in the header itself is unrolled) gets its own id, and each of
    ///   its unrolled members is frozen with its index in the group;
    /// - a chord passes them to its body, and counts as that body.
    ///
    /// Returns the member, its result in `as_tuple()` form (parents left out; a group's result lists its members')
    /// and how many of the chord's parts it sends. An empty chain or group sends none, as in Python.
    static func frozenForChord(_ member: Signature, groupID: String, body: CeleryValue, index: Int)
        -> (signature: Signature, result: CeleryValue, size: Int)
    {
        var frozen = member
        switch member.subtaskType {
        case "chain":
            var steps = inlined(member.tasks)
            guard let last = steps.popLast() else { return (member, .null, 0) }
            for position in steps.indices where steps[position].options["task_id"] == nil {
                steps[position].options["task_id"] = .string(newID())
            }
            let end = frozenForChord(last, groupID: groupID, body: body, index: index)
            frozen.kwargs["tasks"] = .array((steps + [end.signature]).map(\.value))
            return (frozen, end.result, end.size)
        case "group":
            let ownID = member.options["task_id"]?.stringValue ?? newID()
            frozen.options["task_id"] = .string(ownID)
            frozen.options["group_id"] = .string(groupID)
            frozen.options["chord"] = body
            frozen.options["group_index"] = .int(Int64(index))
            let members = unrolled(member.tasks).enumerated().map { position, task in
                frozenForChord(task, groupID: groupID, body: body, index: position)
            }
            frozen.kwargs["tasks"] = .array(members.map(\.signature.value))
            return (frozen, [[.string(ownID), .null], .array(members.map(\.result))], members.reduce(0) { $0 + $1.size })
        case "chord":
            guard let parts = member.chordParts else { return (member, .null, 0) }
            let end = frozenForChord(parts.body, groupID: groupID, body: body, index: index)
            frozen.kwargs["body"] = end.signature.value
            return (frozen, end.result, end.size)
        default:
            let id = member.options["task_id"]?.stringValue ?? newID()
            frozen.options["task_id"] = .string(id)
            if frozen.options["group_id"] == nil { frozen.options["group_id"] = .string(groupID) }
            frozen.options["chord"] = body
            frozen.options["group_index"] = .int(Int64(index))
            return (frozen, [[.string(id), .null], .null], 1)
        }
    }

    /// A group's members with nested groups flattened as Python's `group._freeze_unroll` flattens them (a nested
    /// group's members go to the front of what is left, last first, as `deque.extendleft` puts them), and empty
    /// chains dropped.
    static func unrolled(_ members: [Signature]) -> [Signature] {
        var stack = members
        var flat: [Signature] = []
        while !stack.isEmpty {
            let task = stack.removeFirst()
            if task.subtaskType == "group" {
                stack.insert(contentsOf: task.tasks.reversed(), at: 0)
            } else if task.subtaskType != "chain" || !task.tasks.isEmpty {
                flat.append(task)
            }
        }
        return flat
    }

    /// A chain's steps as Python's `prepare_steps` sends them: nested chains inlined, and a group followed by a step
    /// turned into a chord with that step as its body and the group's id (from the end: `[g1, g2, t]` becomes
    /// `[chord(g1, chord(g2, t))]`), so that the step runs once, with the group's results.
    static func prepared(_ steps: [Signature]) -> [Signature] {
        var reversed: [Signature] = []
        for step in inlined(steps).reversed() {
            if step.subtaskType == "group", let next = reversed.popLast() {
                reversed.append(.chord(step.tasks, body: next, options: step.options))
            } else {
                reversed.append(step)
            }
        }
        return reversed.reversed()
    }

    /// A chain's steps with nested chains inlined, as `prepare_steps` unrolls them.
    private static func inlined(_ steps: [Signature]) -> [Signature] {
        steps.flatMap { $0.subtaskType == "chain" ? inlined($0.tasks) : [$0] }
    }

    /// `link` / `link_error` as the embed carries them: a list of signature dicts, or `null`.
    static func signatureList(_ value: CeleryValue?) -> CeleryValue {
        let signatures = Signature.list(value)
        return signatures.isEmpty ? .null : .array(signatures.map(\.value))
    }
}

extension KombuCompression {
    /// ``checkAvailable()`` as a configuration error, `context` (a setting's name, say) before its message: for where a
    /// setting or an option chooses the method the worker will compress with.
    func requireAvailable(for context: String? = nil) throws(CeleryWorkerError) {
        do throws(CeleryProtocolError) {
            try checkAvailable()
        } catch {
            throw CeleryWorkerError(code: .invalidConfiguration, message: context.map { "\($0): \(error.message)" } ?? error.message)
        }
    }
}
