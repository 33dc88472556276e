import CeleryProtocol

/// What a Python worker does around a task's result for canvas: callbacks and the next chain step after success,
/// the rest of the chain and the errbacks after a failure, and the chord join of header parts.
extension WorkerRun {
    /// Publishes a message the worker sends (a chain step, a callback, a chord's body, a retry …), tried again while
    /// the broker is unreachable (``whileUnreachable(delays:_:)``).
    static func publish(
        _ encoded: [UInt8], queue: String, priority: Int, broker: any Broker, delays: RetryDelays
    ) async throws(CeleryWorkerError) {
        try await whileUnreachable(delays: delays) { () throws(CeleryWorkerError) in
            try await broker.publish(encoded, queue: queue, priority: priority)
        }
    }

    /// A step of sending a message on behalf of a task (the publish, and the writes and reads a chord or group needs
    /// before it), tried again while Redis is unreachable: 30 times, 1 to 32 s apart, where Celery's
    /// `task_publish_retry_policy` retries 3 times over 0.6 s. Only steps that can be repeated: a write whose reply
    /// was lost is made again.
    static func whileUnreachable<Value>(
        delays: RetryDelays, _ step: () async throws(CeleryWorkerError) -> Value
    ) async throws(CeleryWorkerError) -> Value {
        try await untilReachable(retries: 30, delay: delays.delay(attempt:), step)
    }

    /// Sends what this worker publishes on behalf of `job`: through the broker, retrying while Redis is unreachable,
    /// in the worker's `task_serializer` (as a Python worker sends them, whatever serializer the task's message
    /// came in), at its priority with `task_inherit_parent_priority`.
    func canvas(for job: PreparedJob) -> CanvasSender {
        let broker = service.broker
        let backend = service.backend
        let configuration = self.configuration
        let delays = service.retryDelays
        let sentEvents = configuration.sendSentEvent ? service.events : nil
        let (signals, logger) = (self.signals, self.logger)
        var sender = CanvasSender(
            publish: { envelope, queue, priority throws(CeleryWorkerError) in
                try await signals.publishing(envelope, queue: queue, logger: logger) { envelope throws(CeleryWorkerError) in
                    let encoded = try configuration.sealed(envelope).encoded()
                    try await Self.publish(encoded, queue: queue, priority: priority, broker: broker, delays: delays)
                    await sentEvents?.sendTaskSent(envelope, queue: queue)
                }
            },
            route: { exchange, routingKey, topic throws(CeleryWorkerError) in
                guard let redis = broker as? RedisBroker else { return [] }
                return try await Self.whileUnreachable(delays: delays) { () throws(CeleryWorkerError) in
                    try await redis.boundQueues(exchange: exchange, routingKey: routingKey, topic: topic)
                }
            },
            setChordSize: { groupID, size throws(CeleryWorkerError) in
                guard let backend else { return }
                try await Self.whileUnreachable(delays: delays) { () throws(CeleryWorkerError) in
                    try await backend.setChordSize(groupID: groupID, size: size)
                }
            },
            saveGroup: { groupID, result throws(CeleryWorkerError) in
                guard let backend else { return }
                try await Self.whileUnreachable(delays: delays) { () throws(CeleryWorkerError) in
                    try await backend.saveGroup(groupID: groupID, result: result)
                }
            },
            origin: "gen\(Host.pid)@\(Host.name)", replyTo: oid, defaultQueue: configuration.defaultQueue,
            routes: configuration.taskRoutes, contentType: configuration.taskSerializer, compression: configuration.taskCompression,
            signaturesAreDecoded: true, isoformat: { configuration.isoformat(unixSeconds: $0) })
        sender.fallbackPriority = configuration.fallbackPriority(parent: job.deliveryInfo.priority)
        return sender
    }

    /// The options a message sent on behalf of a running task carries: it is the parent, its root is the root.
    private func lineage(_ message: CeleryTaskMessage) -> CeleryObject {
        ["parent_id": .string(message.id), "root_id": .string(message.rootID ?? message.id)]
    }

    /// After success, in Python's order and before the result is stored: the `link` callbacks (one alone; several
    /// as their groups first, then the others together as one new group), then the next chain step with the rest
    /// of the chain. Returns the `children` of the result document, and the error if one could not be encoded (the
    /// others are logged): Celery's trace then fails the task with kombu's `EncodeError`.
    /// Inlined: a task without callbacks or a chain costs no async call.
    @inline(__always)
    func sendFollowUps(_ job: PreparedJob, result: CeleryValue) async -> (children: CeleryValue, encodeError: TraceEncodeError?) {
        guard job.message.hasCallbacksOrChain else { return ([], nil) }
        return await sendCallbacksAndChain(job, result: result)
    }

    private func sendCallbacksAndChain(_ job: PreparedJob, result: CeleryValue) async -> (children: CeleryValue, encodeError: TraceEncodeError?) {
        let message = job.message
        let callbacks = Signature.list(message.embed.callbacks)
        let chain = Signature.list(message.embed.chain)
        guard !callbacks.isEmpty || !chain.isEmpty else { return ([], nil) }
        let sender = canvas(for: job)
        var children: [CeleryValue] = []
        do {
            if callbacks.count == 1 {
                children.append(try await sender.apply(callbacks[0], args: [result], options: lineage(message)))
            } else if callbacks.count > 1 {
                for group in callbacks where group.subtaskType == "group" {
                    children.append(try await sender.apply(group, args: [result], options: lineage(message)))
                }
                let others = callbacks.filter { $0.subtaskType != "group" }
                if !others.isEmpty {
                    children.append(try await sender.apply(.group(others), args: [result], options: lineage(message)))
                }
            }
            if let next = chain.last {
                var options = lineage(message)
                options["chain"] = .array(chain.dropLast().map(\.value))
                children.append(try await sender.apply(next, args: [result], options: options))
            }
        } catch let error where error.code == .encodeError {
            return (.array(children), TraceEncodeError(message: error.message))
        } catch {
            logger.error("Task \(job.displayName)[\(message.id)]: cannot send its callbacks or next chain step: \(error.message)")
        }
        return (.array(children), nil)
    }

    /// Python's `Task.replace`, after the task threw ``ReplaceTask``: sends the replacement (see there) and
    /// returns the outcome the task ends with: ``IgnoreTask`` once it is sent, Celery's `ImproperlyConfigured` for a
    /// signature that cannot replace a task, or the error that kept it from being sent.
    func replace(_ job: PreparedJob, with signature: Signature) async -> Result<CeleryValue, any Error> {
        let message = job.message
        do {
            let replacement = try Self.replacement(for: message, with: signature)
            try await canvas(for: job).apply(
                replacement, options: ["parent_id": .string(message.id), "root_id": .string(message.rootID ?? message.id)])
            return .failure(IgnoreTask())
        } catch {
            return .failure(error)
        }
    }

    /// The signature `Task.replace` sends for `message`: a group made a chord into `celery.accumulate` (also as a
    /// chain's last step); this task's callbacks linked and its errbacks linked to it; frozen with this task's id;
    /// this task's chord, group, index and root, and one more `replaced_task_nesting`; the rest of this task's chain
    /// after it.
    static func replacement(for message: CeleryTaskMessage, with signature: Signature) throws(PythonException) -> Signature {
        guard signature.options["chord"] == nil else {
            throw PythonException(
                type: "ImproperlyConfigured", module: "celery.exceptions", message: "A signature replacing a task must not be part of a chord")
        }
        if signature.subtaskType == "chain", signature.tasks.isEmpty {
            throw PythonException(type: "ImproperlyConfigured", module: "celery.exceptions", message: "Cannot replace with an empty chain")
        }
        let accumulate = Signature(task: "celery.accumulate", kwargs: ["index": 0])
        var replacement = signature
        if replacement.subtaskType == "group" {
            replacement = .chord(replacement.tasks, body: accumulate, options: replacement.options)
        } else if replacement.subtaskType == "chain", let last = replacement.tasks.last, last.subtaskType == "group" {
            replacement.kwargs["tasks"] = .array(
                replacement.tasks.dropLast().map(\.value) + [Signature.chord(last.tasks, body: accumulate, options: last.options).value])
        }
        for callback in Signature.list(message.embed.callbacks) { replacement = linking("link", callback, to: replacement) }
        for errback in Signature.list(message.embed.errbacks) { replacement = linking("link_error", errback, to: replacement) }
        replacement = frozen(replacement, id: message.id)
        let nesting = Int64((message.headers["replaced_task_nesting"]?.intValue ?? 0) + 1)
        if !message.embed.chord.isNull { replacement.options["chord"] = message.embed.chord }
        if let group = message.groupID { replacement.options["group_id"] = .string(group) }
        if let index = message.groupIndex { replacement.options["group_index"] = .int(Int64(index)) }
        replacement.options["root_id"] = .string(message.rootID ?? message.id)
        replacement.options["replaced_task_nesting"] = .int(nesting)
        func marked(_ task: Signature) -> Signature {
            var marked = task
            marked.options["replaced_task_nesting"] = .int(nesting)
            return marked
        }
        if replacement.subtaskType == "chain" { replacement.kwargs["tasks"] = .array(replacement.tasks.map { marked($0).value }) }
        let rest = Signature.list(message.embed.chain).reversed().map(marked)
        return rest.isEmpty ? replacement : .chain([replacement] + rest)
    }

    /// Python's `link` / `link_error` on a signature: a chain links its last task (errbacks: every task), a chord its
    /// body, a task appends to its own option.
    private static func linking(_ key: String, _ callback: Signature, to signature: Signature) -> Signature {
        var linked = signature
        switch signature.subtaskType {
        case "chain":
            var tasks = signature.tasks
            for index in tasks.indices where key == "link_error" || index == tasks.count - 1 {
                tasks[index] = linking(key, callback, to: tasks[index])
            }
            linked.kwargs["tasks"] = .array(tasks.map(\.value))
        case "chord":
            guard let body = signature.chordParts?.body else { return signature }
            linked.kwargs["body"] = linking(key, callback, to: body).value
        default:
            linked.options[key] = .array(Signature.list(signature.options[key]).map(\.value) + [callback.value])
        }
        return linked
    }

    /// Python's `freeze(_id)`: the id goes to what gives the signature its result (a chain's last task, a chord's
    /// body), unless that already has one.
    private static func frozen(_ signature: Signature, id: String) -> Signature {
        var frozen = signature
        switch signature.subtaskType {
        case "chain":
            var tasks = signature.tasks
            guard let last = tasks.popLast() else { return signature }
            frozen.kwargs["tasks"] = .array((tasks + [Self.frozen(last, id: id)]).map(\.value))
        case "chord":
            guard let body = signature.chordParts?.body else { return signature }
            frozen.kwargs["body"] = Self.frozen(body, id: id).value
        default:
            if frozen.options["task_id"] == nil { frozen.options["task_id"] = .string(id) }
        }
        return frozen
    }

    /// After a failure: FAILURE with the same exception for every step left in the chain, from the next one to the
    /// chain's last (the message lists them the other way round). The worker stores them in one atomic write with the
    /// failed task's own result, so that whoever sees any of them, or the failed task, finds all of them failed.
    /// Python stores its own result first and then each step on its own, which lets `AsyncResult.get()` on the
    /// chain raise (it checks the parents between waits) before the later steps are stored.
    func failedChainSteps(_ message: CeleryTaskMessage, exception: CeleryExceptionInfo, traceback: String?)
        -> [CeleryResultDocument]
    {
        Signature.list(message.embed.chain).reversed().compactMap { step in
            guard let id = step.options["task_id"]?.stringValue else { return nil }
            return CeleryResultDocument(
                taskID: id, status: .failure, result: exception.value, traceback: traceback, children: [],
                dateDone: dateDoneNow(), groupID: step.options["group_id"]?.stringValue)
        }
    }

    /// After a failure, in Python's order (after the result, the chain's steps and the chord part): the `link_error`
    /// errbacks, sent as one group with the failed task's id as their argument (Celery's `errback(task_id)` form).
    func sendErrbacks(of job: PreparedJob, exception: CeleryExceptionInfo, traceback: String?) async {
        let message = job.message
        let failed = ErrbackCall(
            taskID: message.id, taskName: message.name, taskArgs: message.args, taskKwargs: message.kwargs, exception: exception,
            traceback: traceback, logger: logger)
        await sendErrbacks(message.embed.errbacks, failed: failed, options: lineage(message), job: job)
    }

    /// Celery's `_call_task_errbacks`: an errback registered here as a new-style one (``TaskRegistry/registerErrback(_:options:_:)``)
    /// is called at once; the others are sent as a group, with the failed task's id as their argument.
    @discardableResult
    /// `failed` is what Celery's `_call_task_errbacks` gives a new-style errback, without the errback's own arguments.
    private func sendErrbacks(_ errbacks: CeleryValue, failed: ErrbackCall, options: CeleryObject, job: PreparedJob) async
        -> CeleryValue
    {
        var signatures = Signature.list(errbacks)
        guard !signatures.isEmpty else { return [] }
        signatures = await callInline(signatures, failed: failed)
        guard !signatures.isEmpty else { return [] }
        let failedID = failed.taskID
        do {
            return [try await canvas(for: job).apply(.group(signatures), args: [.string(failedID)], options: options)]
        } catch {
            logger.error("Cannot send the errbacks of \(failedID): \(error.message)")
            return []
        }
    }

    /// A chord header part: records its result; the part that completes the chord sends the body with the header
    /// results (in `group_index` order, or in the shape of a header Celery saved because it holds groups: see
    /// ``ChordCompletion/join()``), or, when the chord failed, sends the body's errbacks and stores its `ChordError`
    /// for the body. Inlined: a task outside a chord costs no async call.
    @inline(__always)
    func chordPartReturn(_ job: PreparedJob, state: TaskState, result: CeleryValue) async {
        guard job.message.isChordPart else { return }
        await returnChordPart(job, state: state, result: result)
    }

    private func returnChordPart(_ job: PreparedJob, state: TaskState, result: CeleryValue) async {
        let message = job.message
        guard let body = Signature(message.embed.chord), let groupID = message.groupID, let backend = service.backend else { return }
        // Each step is tried again while the backend is unreachable, as result writes are: a chord whose last part
        // met a Redis restart would otherwise never send its body. Every step can be repeated: the part is counted
        // once, the claim is taken under one token for all tries, and a body sent twice (its reply lost) has one id.
        let token = CanvasSender.newID()
        do {
            guard
                let completion = try await retrying({ () throws(CeleryWorkerError) in
                    try await backend.chordPartReturn(
                        groupID: groupID, taskID: message.id, groupIndex: message.groupIndex, state: state, result: result,
                        token: token)
                })
            else { return }
            switch completion.join() {
            case .failed(let error):
                logger.error("Chord '\(groupID)' raised: \(error.repr)")
                try await failChord(job, groupID: groupID, body: body, error: error)
            case .results(let results):
                guard try await retrying({ () throws(CeleryWorkerError) in try await backend.extendChordClaim(groupID: groupID, token: token) })
                else {
                    logger.warning("Chord callback for '\(groupID)' not published: dispatch claim is no longer owned by this worker")
                    return
                }
                do {
                    // Its publish is tried again while the broker is unreachable, as every message the worker sends.
                    try await canvas(for: job).apply(body, args: [results], options: lineage(message))
                } catch let error where error.code == .encodeError {
                    // Celery's on_chord_part_return: a body its serializer cannot write fails the chord.
                    let repr = TraceEncodeError(message: error.message).pythonException.repr
                    logger.error("Chord callback for '\(groupID)' raised: \(repr)")
                    try await failChord(job, groupID: groupID, body: body, error: ChordCompletion.chordError("Callback error: \(repr)"))
                    return
                }
                try await retrying { () throws(CeleryWorkerError) in try await backend.chordFinished(groupID: groupID, token: token) }
            }
        } catch {
            logger.error("Chord '\(groupID)' raised: \(error.message)")
        }
    }

    /// A step of a chord's completion, tried again as a result write is while the backend is unreachable.
    private func retrying<Value>(_ step: () async throws(CeleryWorkerError) -> Value) async throws(CeleryWorkerError) -> Value {
        try await retryingResultStep(unreachable: "Result backend", step)
    }

    /// A failed chord, as Celery's `chord_error_from_stack`: the body's errbacks are sent and its `error` (a
    /// `ChordError`) stored; the chord's keys go.
    private func failChord(_ job: PreparedJob, groupID: String, body: Signature, error: CeleryExceptionInfo) async throws(CeleryWorkerError) {
        let bodyID = body.options["task_id"]?.stringValue ?? CanvasSender.newID()
        let failed = ErrbackCall(
            taskID: bodyID, taskName: body.task, taskArgs: body.args, taskKwargs: body.kwargs, exception: error, traceback: nil,
            logger: logger)
        let children = await sendErrbacks(
            body.options["link_error"] ?? .null, failed: failed,
            options: ["parent_id": .string(bodyID), "root_id": .string(bodyID)], job: job)
        await store(
            CeleryResultDocument(
                taskID: bodyID, status: .failure, result: error.value,
                traceback: "Traceback (most recent call last):\n  File \"<swift>\", line 0, in chord join\n\(error.tracebackLine)\n",
                children: .array(children.arrayValue ?? []),
                dateDone: dateDoneNow()))
        guard let backend = service.backend else { return }
        try await retrying { () throws(CeleryWorkerError) in try await backend.chordFailed(groupID: groupID) }
    }

    /// Calls the new-style errbacks among `signatures`; returns the others, to send.
    private func callInline(_ signatures: [Signature], failed: ErrbackCall) async -> [Signature] {
        var others: [Signature] = []
        for signature in signatures {
            guard signature.subtaskType == nil, let errback = service.registry[signature.task]?.errback else {
                others.append(signature)
                continue
            }
            var call = failed
            (call.args, call.kwargs) = (signature.args, signature.kwargs)
            do {
                try await errback(call)
            } catch {
                logger.error("Errback \(signature.task) of \(failed.taskID) raised: \(CeleryExceptionInfo(error: error).repr)")
            }
        }
        return others
    }
}
