import CeleryProtocol
import Foundation
import Logging
import Synchronization

/// Why a running task was told to stop.
enum StopReason: Sendable {
    case softTimeLimit, terminated
}

/// Whether and why the worker told a running task to stop (a soft time limit, a `revoke(terminate=True)`), and
/// how: the job's task is cancelled once its body runs (from ``arm()``), and a process-pool child is signalled
/// according to the reason. The cancellation may land just after ``seal()``, so a job stopped on request finishes
/// its bookkeeping in a task of its own.
final class StopRequest: Sendable {
    private struct State {
        var reason: StopReason?
        var cancel: (@Sendable () -> Void)?
        var armed = false
        var sealed = false

        /// What cancels the job's task when a stop is due (requested, and the body started), taken once.
        mutating func dueCancellation() -> (@Sendable () -> Void)? {
            guard reason != nil, armed, !sealed, let cancel else { return nil }
            self.cancel = nil
            return cancel
        }
    }

    private let state = Mutex(State())

    /// The first reason given, if any.
    var value: StopReason? { state.withLock { $0.reason } }

    /// Records the reason (the first one wins); the job's task is cancelled if its body runs, or once it starts.
    func request(_ why: StopReason) {
        let cancel = state.withLock { state -> (@Sendable () -> Void)? in
            guard state.reason == nil, !state.sealed else { return nil }
            state.reason = why
            return state.dueCancellation()
        }
        cancel?()  // outside the lock: cancellation handlers read `value`
    }

    /// Attaches what cancels the job's task.
    func attach(_ cancel: @escaping @Sendable () -> Void) {
        let due = state.withLock { state -> (@Sendable () -> Void)? in
            state.cancel = cancel
            return state.dueCancellation()
        }
        due?()
    }

    /// The body starts: a stop requested before or from now on cancels the job's task.
    func arm() {
        let due = state.withLock { state -> (@Sendable () -> Void)? in
            state.armed = true
            return state.dueCancellation()
        }
        due?()
    }

    /// The body finished: later requests change nothing. Returns the reason it was stopped for, if any.
    func seal() -> StopReason? {
        state.withLock { state in
            state.sealed = true
            state.cancel = nil
            return state.reason
        }
    }
}

/// A task message that is valid, registered and ready to run. A class: a job is handed between the receive loop,
/// the dispatcher, its task and the bookkeeping, and a reference costs one retain where the fields cost dozens.
final class PreparedJob: Sendable {
    let delivery: BrokerDelivery
    let message: CeleryTaskMessage
    let task: RegisteredTask
    let etaTime: Double?
    let expiresTime: Double?
    /// Where the message came from (read from the envelope once).
    let deliveryInfo: DeliveryInfo

    init(
        delivery: BrokerDelivery, message: CeleryTaskMessage, task: RegisteredTask, etaTime: Double?,
        expiresTime: Double?, deliveryInfo: DeliveryInfo
    ) {
        self.delivery = delivery
        self.message = message
        self.task = task
        self.etaTime = etaTime
        self.expiresTime = expiresTime
        self.deliveryInfo = deliveryInfo
    }

    /// The name shown in logs: the `shadow` header when set, as in Celery.
    var displayName: String { message.shadow ?? message.name }
}

extension WorkerRun {
    // MARK: Receiving

    /// Validates a delivery. Messages that cannot run are logged, answered as Celery answers them, and settled
    /// here; only runnable jobs are returned.
    func prepare(_ delivery: BrokerDelivery) async -> PreparedJob? {
        let envelope: KombuEnvelope
        switch delivery.envelope {
        case .failure(let error):
            logger.error("Received and deleted invalid message\(Self.label(error)): \(error.message)\nThe message was: \(Self.preview(delivery.raw))")
            await storeFailure(for: error, exception: Self.exception(for: error))
            await discard(delivery)
            await sendRejected(delivery, reason: error.message)
            return nil
        case .success(let parsed):
            envelope = parsed
        }
        let message: CeleryTaskMessage
        do {
            message = try configuration.taskMessage(envelope)
        } catch {
            if error.code == .invalidTaskMessage, error.taskID == nil {
                logger.warning(
                    "Received and deleted unknown message. Wrong destination?!?\n\(error.message)\nThe message was: \(Self.preview(delivery.raw))")
            } else {
                logger.error("Received invalid task message\(Self.label(error)): \(error)")
            }
            await storeFailure(for: error, exception: Self.exception(for: error))
            await discard(delivery)
            await sendRejected(delivery, reason: error.message)
            return nil
        }
        guard let task = service.registry[message.name] else {
            logger.error(
                """
                Received unregistered task of type '\(message.name)'.
                The message has been ignored and discarded.

                Did you remember to register the task with the Swift worker's TaskRegistry?
                The task id was \(message.id); its headers: \(PythonRepr.truncated(PythonRepr.repr(.object(message.headers))))
                """
            )
            let failure = CeleryExceptionInfo(
                type: "NotRegistered", arguments: [.string(message.name)],
                module: "celery.exceptions")
            let document = failureDocument(message, queue: envelope.deliveryInfo.routingKey, exception: failure, traceback: nil)
            sendTaskEvent("task-failed", message, ["exception": .string(failure.repr)])
            guard sendsTaskSignals, !signals.taskUnknown.isEmpty else {
                // In the settler's next batch, the FAILURE stored before the acknowledgement, as a task's result is:
                // the receive loop goes on at once (a round trip for each would hold every message behind it).
                settler.submit(document: service.backend == nil ? nil : document, ack: delivery)
                prefetch.release()
                return nil
            }
            // `task_unknown` is sent once the FAILURE is stored and the message forgotten.
            await store(document)
            await discard(delivery)
            let event = WorkerSignals.TaskUnknown(name: message.name, id: message.id, message: delivery.raw)
            await WorkerSignals.send(signals.taskUnknown, event, signal: "task_unknown", logger: logger)
            return nil
        }
        var etaTime: Double?
        var expiresTime: Double?
        do {
            etaTime = try time(message.eta, field: "eta", message: message)
            expiresTime = try time(message.expires, field: "expires", message: message)
        } catch {
            logger.error("Received invalid task message\(Self.label(error)): \(error)")
            await storeFailure(for: error, exception: Self.exception(for: error))
            await discard(delivery)
            await sendRejected(delivery, reason: error.message)
            return nil
        }
        let job = PreparedJob(
            delivery: delivery, message: message, task: task, etaTime: etaTime, expiresTime: expiresTime,
            deliveryInfo: envelope.deliveryInfo)
        if await revokeIfExpired(job) {
            // Acknowledged, as Celery's `Request.revoked()` does, and its prefetch slot freed.
            await discard(delivery)
            return nil
        }
        if await discardIfRevoked(job) { return nil }
        logger.info("Task \(job.displayName)[\(message.id)] received")
        if sendsTaskSignals, !signals.taskReceived.isEmpty {
            await WorkerSignals.send(signals.taskReceived, request(for: job), signal: "task_received", logger: logger)
        }
        sendTaskEvent(
            "task-received", message,
            [
                "name": .string(message.name), "args": message.eventHeaders.argsRepr,
                "kwargs": message.eventHeaders.kwargsRepr, "root_id": message.eventHeaders.rootID,
                "parent_id": message.eventHeaders.parentID, "retries": .int(Int64(message.retries)),
                "eta": message.eta.map(CeleryValue.string) ?? .null, "expires": message.expires.map(CeleryValue.string) ?? .null,
            ])
        return job
    }

    private func time(_ text: String?, field: String, message: CeleryTaskMessage) throws(CeleryProtocolError) -> Double? {
        guard let text else { return nil }
        guard let time = configuration.parseTime(text) else {
            throw CeleryProtocolError(
                code: .invalidTaskMessage, message: "\(field) '\(text)' is not an ISO 8601 time",
                taskID: message.id, taskName: message.name)
        }
        return time
    }

    private static func label(_ error: CeleryProtocolError) -> String {
        switch (error.taskName, error.taskID) {
        case (let name?, let id?): " \(name)[\(id)]"
        case (nil, let id?): " [\(id)]"
        default: ""
        }
    }

    /// The first 1 KiB of a raw message, for a log line.
    static func preview(_ raw: [UInt8]) -> String {
        let text = String(decoding: raw.prefix(1024), as: UTF8.self)
        return raw.count > 1024 ? text + "… (\(raw.count) bytes)" : text
    }

    /// The Python exception stored for a message that cannot be decoded, so a waiting `.get()` raises instead of
    /// hanging (Python Celery stores nothing here).
    static func exception(for error: CeleryProtocolError) -> CeleryExceptionInfo {
        switch error.code {
        case .unsupportedContentType:
            CeleryExceptionInfo(type: "ContentDisallowed", arguments: [.string(error.message)], module: "kombu.exceptions")
        case .invalidTaskMessage:
            CeleryExceptionInfo(type: "InvalidTaskError", arguments: [.string(error.message)], module: "celery.exceptions")
        case .invalidSignature:
            CeleryExceptionInfo(type: "SecurityError", arguments: [.string(error.message)], module: "celery.exceptions")
        default:
            CeleryExceptionInfo(type: "DecodeError", arguments: [.string(error.message)], module: "kombu.exceptions")
        }
    }

    /// Celery's `task_rejected`, for a message that could not be read as a task.
    private func sendRejected(_ delivery: BrokerDelivery, reason: String) async {
        guard sendsTaskSignals, !signals.taskRejected.isEmpty else { return }
        let event = WorkerSignals.TaskRejected(message: delivery.raw, reason: reason)
        await WorkerSignals.send(signals.taskRejected, event, signal: "task_rejected", logger: logger)
    }

    /// Forgets a message that will not run (Celery's reject without requeue), and with `releasesPrefetch` gives back
    /// the prefetch slot it took when it was fetched.
    func discard(_ delivery: BrokerDelivery, releasesPrefetch: Bool = true) async {
        var machine = DeliveryStateMachine(acksLate: true)
        await carryOut(machine.discard(), for: delivery)
        if releasesPrefetch { prefetch.release() }
    }

    /// Stores REVOKED `expired` for a job whose `expires` has passed, as Celery does; returns whether it did.
    /// Inlined: the usual job, with no expiry, costs no async call.
    @inline(__always)
    private func revokeIfExpired(_ job: PreparedJob) async -> Bool {
        guard let expires = job.expiresTime, expires <= WallClock.now() else { return false }
        await revokeExpired(job)
        return true
    }

    private func revokeExpired(_ job: PreparedJob) async {
        logger.info("Discarding revoked task: \(job.displayName)[\(job.message.id)] (expired)")
        await storeRevoked(job, reason: "expired", children: [])
        sendTaskEvent("task-revoked", job.message, ["terminated": false, "signum": nil, "expired": true])
    }

    /// A task revoked by id, or by one of its stamps (`revoke_by_stamped_headers`), is not run: REVOKED is stored,
    /// the message acknowledged, as in Python; with `releasesPrefetch`, its prefetch slot is given back (on receipt:
    /// a job about to run gives back its own, if it holds one). Inlined: a job that is not revoked costs no async
    /// call, and its stamps are only read once some were revoked.
    @inline(__always)
    private func discardIfRevoked(_ job: PreparedJob, releasesPrefetch: Bool = true) async -> Bool {
        let (byID, stampsRevoked) = revoked.withLock { ($0.contains(job.message.id), !$0.stamps.isEmpty) }
        if byID {
            await discardRevoked(job, releasesPrefetch: releasesPrefetch)
            return true
        }
        guard stampsRevoked else { return false }
        return await discardIfRevokedByStamp(job, releasesPrefetch: releasesPrefetch)
    }

    private func discardIfRevokedByStamp(_ job: PreparedJob, releasesPrefetch: Bool) async -> Bool {
        guard let (header, value) = revoked.withLock({ $0.revokingStamp(of: job.message) }) else { return false }
        await discardRevoked(job, byHeader: PythonRepr.repr([header: value] as CeleryValue), releasesPrefetch: releasesPrefetch)
        return true
    }

    private func discardRevoked(_ job: PreparedJob, byHeader header: String? = nil, releasesPrefetch: Bool) async {
        logger.info("Discarding revoked task: \(job.displayName)[\(job.message.id)]\(header.map { " (revoked by header: \($0))" } ?? "")")
        await storeRevoked(job, reason: "revoked", children: [])
        sendTaskEvent("task-revoked", job.message, ["terminated": false, "signum": nil, "expired": false])
        await discard(job.delivery, releasesPrefetch: releasesPrefetch)
    }

    func storeRevoked(_ job: PreparedJob, reason: String, children: CeleryValue) async {
        var document = failureDocument(
            job.message, queue: job.deliveryInfo.routingKey,
            exception: CeleryExceptionInfo(type: "TaskRevokedError", arguments: [.string(reason)], module: "celery.exceptions"),
            traceback: nil)
        document.status = .revoked
        document.children = children
        await store(document)
        if sendsTaskSignals, !signals.taskRevoked.isEmpty {
            let revoked = WorkerSignals.TaskRevoked(
                request: request(for: job), terminated: reason == "terminated", signum: reason == "terminated" ? 15 : nil,
                expired: reason == "expired")
            await WorkerSignals.send(signals.taskRevoked, revoked, signal: "task_revoked", logger: logger)
        }
    }

    /// The request a task's context and signals carry.
    func request(for job: PreparedJob) -> TaskRequest {
        TaskRequest(message: job.message, deliveryInfo: job.deliveryInfo, hostname: configuration.nodeName)
    }

    // MARK: Running

    /// Runs a job in the slot it was given: ack policy, the task body on the task threads, result, log line. Runs
    /// in the job's own task (see ``JobTasks``), which `stop` cancels while the body runs.
    func execute(_ job: PreparedJob, holdsPrefetch: Bool, stop: StopRequest) async {
        let message = job.message
        let queue = job.deliveryInfo.routingKey
        var holdsPrefetch = holdsPrefetch
        defer { if holdsPrefetch { prefetch.release() } }
        defer { settler.nudge() }  // an early acknowledgement waiting for company goes out now, result or not
        if await revokeIfExpired(job) {
            await carryOut(.ack, for: job.delivery)
            return
        }
        // Its prefetch slot, if it holds one, is given back once, on the way out.
        if await discardIfRevoked(job, releasesPrefetch: false) { return }
        var machine = DeliveryStateMachine(acksLate: job.task.options.acksLate ?? configuration.acksLate)
        held.withLock { $0.markStarted(job.delivery) }
        counters.withLock {
            $0.active += 1
            $0.processed += 1
            // A plain read and `updateValue`: `totals[name, default: 0] += 1` runs through three nested modify
            // accessors, each allocating its frame.
            $0.totals.updateValue(($0.totals[message.name] ?? 0) + 1, forKey: message.name)
        }
        let timeStart = WallClock.now()
        running.withLock { $0.add(RunningTask(job: job, timeStart: timeStart, stop: stop)) }
        service.metrics.active.increment()
        service.metrics.recordWait(timeStart - max(job.delivery.receivedAt, job.etaTime ?? 0), task: message.name)
        defer {
            service.metrics.active.decrement()
            counters.withLock { $0.active -= 1 }
            running.withLock { $0.remove(job) }
        }
        sendTaskEvent("task-started", message)
        if machine.start() == .ack {
            // Acknowledged by the settler with other tasks' writes, usually with this task's own result. As in Celery,
            // an acknowledged message no longer counts against the prefetch limit: the slot is free at once (the
            // message stays recorded in `unacked` until the write lands, so nothing is lost meanwhile).
            settler.submit(ack: job.delivery, early: true)
            // Not with worker_disable_prefetch, whose window counts running tasks too.
            if holdsPrefetch, !configuration.disablePrefetch {
                prefetch.release()
                holdsPrefetch = false
            }
        }
        if configuration.deduplicateSuccessfulTasks, await skipsAsSucceeded(job, &machine, since: timeStart) { return }
        let storesResults = !ignoresResult(job)
        let request = request(for: job)
        if sendsTaskSignals, !signals.taskPrerun.isEmpty {
            await WorkerSignals.send(signals.taskPrerun, request, signal: "task_prerun", logger: logger)
        }
        if storesResults, job.task.options.trackStarted ?? configuration.trackStarted {
            let started: CeleryValue = ["pid": .int(Int64(Host.pid)), "hostname": .string(configuration.nodeName)]
            await store(document(message, queue: queue, status: .started, result: started, ready: false))
        }

        let context = TaskContext(
            request: request, workerLogger: logger, client: service.client,
            stateReporter: storesResults ? self : IgnoredStates(), fallbackPriority: configuration.fallbackPriority(parent: job.deliveryInfo.priority)
        )
        let started = ContinuousClock.now
        // The message's own limits, then remote control's, the task's, the worker's (the message's read once, the
        // overrides looked up only when the message leaves one open).
        let sent = message.timeLimit
        let overrides = sent.soft == nil || sent.hard == nil ? limits.withLock { $0.timeLimits(for: message.name) } : nil
        let softLimit = sent.soft ?? overrides?.soft ?? job.task.options.softTimeLimit ?? configuration.softTimeLimit
        let hardLimit = sent.hard ?? overrides?.hard ?? job.task.options.timeLimit ?? configuration.timeLimit
        var (outcome, stopReason, child) = await run(job, context, softLimit: softLimit, hardLimit: hardLimit, stop: stop)
        if stopReason == .softTimeLimit, case .failure = outcome {
            outcome = .failure(PythonException(type: "SoftTimeLimitExceeded", module: "billiard.exceptions", arguments: []))
        }
        let runtime = Self.seconds(ContinuousClock.now - started)
        service.metrics.recordRuntime(runtime, task: message.name)
        let ending = Ending(
            job: job, machine: machine, outcome: outcome, stopReason: stopReason, runtime: runtime,
            storesResults: storesResults, holdsPrefetch: holdsPrefetch, child: child)
        if stopReason != nil, !jobTasks.isCancelled {
            // The stop cancelled this task to stop the body (or will, in a moment): the bookkeeping goes on in a task
            // that only a cold shutdown cancels, so no write is cut short.
            holdsPrefetch = await jobTasks.start(on: executor) { await self.finish(ending) }.value
        } else {
            holdsPrefetch = await finish(ending)
        }
    }

    /// What a job's bookkeeping needs once its body has run.
    private struct Ending: Sendable {
        let job: PreparedJob
        let machine: DeliveryStateMachine
        let outcome: Result<CeleryValue, any Error>
        let stopReason: StopReason?
        let runtime: Double
        let storesResults: Bool
        let holdsPrefetch: Bool
        /// The process-pool child that ran the body (`ForkPoolWorker-N`), if one did.
        let child: String?
    }

    /// Stores the result, acknowledges, logs and sends events, runs follow-ups; returns whether the job still holds
    /// its prefetch permit.
    private func finish(_ ending: Ending) async -> Bool {
        let job = ending.job
        let message = job.message
        let queue = job.deliveryInfo.routingKey
        var machine = ending.machine
        var holdsPrefetch = ending.holdsPrefetch
        let storesResults = ending.storesResults
        let runtime = ending.runtime
        // What the body sent: its result's first children, before its callbacks, as Python's trail lists them.
        var children = trails.withLock { $0.isEmpty ? [] : $0.removeValue(forKey: message.id) ?? [] }
        // As in Python's prefork pool, the child that ran the task logs its outcome: the line names it.
        let outcomeLogger =
            ending.child.map { name in
                var child = logger
                child[metadataKey: LogKeys.processName] = .string(name)
                return child
            } ?? logger
        if ending.stopReason == .terminated, !jobTasks.isCancelled {
            logger.info("Task \(job.displayName)[\(message.id)] terminated by a revoke")
            await storeRevoked(job, reason: "terminated", children: [])
            sendTaskEvent("task-revoked", message, ["terminated": true, "signum": 15, "expired": false])
            await carryOut(machine.finish(), for: job.delivery)
            return holdsPrefetch
        }

        if jobTasks.isCancelled, Task.isCancelled {
            logger.warning("Task \(job.displayName)[\(message.id)] interrupted by cold shutdown")
            // An acks-late message goes back with the reserved ones, in one "Restoring …" as Celery counts them.
            if machine.abandon() != .none { held.withLock { $0.markInterrupted(job.delivery) } }
            return holdsPrefetch
        }
        var outcome = ending.outcome
        var requeuesAfterTimeout = false
        // Celery's task_postrun, once the outcome is handled, before an acks-late message is acknowledged.
        func postrun(_ state: TaskState, _ result: CeleryValue) async {
            guard !signals.taskPostrun.isEmpty else { return }
            let event = WorkerSignals.TaskPostrun(request: request(for: job), state: state, result: result)
            await WorkerSignals.send(signals.taskPostrun, event, signal: "task_postrun", logger: logger)
        }
        if case .failure(let replacement as ReplaceTask) = outcome {
            outcome = await replace(job, with: replacement.signature)
        }
        // After success, Celery's trace sends the callbacks and the chain's next step, then stores the result; a
        // message or result its serializer cannot write (an integer beyond 64 bits in msgpack) raises kombu's
        // EncodeError there, and the task fails with it.
        if case .success(let value) = outcome {
            let followUps = await sendFollowUps(job, result: value)
            children += followUps.children.arrayValue ?? []
            if let failure = followUps.encodeError {
                outcome = .failure(failure)
            } else if storesResults, configuration.resultSerializer == .msgpack, !value.fitsMsgpack {
                outcome = .failure(TraceEncodeError(message: TraceEncodeError.integerOutOfRange))
            }
        }
        switch outcome {
        case .failure(let rejection as RejectTask):
            outcomeLogger.info("Task \(job.displayName)[\(message.id)] rejected: \(rejection.pythonException.repr)")
            if !rejection.requeue {
                if storesErrors(job) {
                    await store(failureDocument(message, queue: queue, exception: rejection.pythonException, traceback: nil))
                }
                sendTaskEvent("task-failed", message, ["exception": .string(rejection.pythonException.repr)])
            }
            sendTaskEvent("task-rejected", message, ["requeue": .bool(rejection.requeue)])
            if sendsTaskSignals { await postrun(.rejected, rejection.pythonException.value) }
            await carryOut(machine.reject(requeue: rejection.requeue), for: job.delivery)
            return holdsPrefetch
        case .failure(let lost as WorkerLostError)
        where machine.acksLate && (job.task.options.rejectOnWorkerLost ?? configuration.rejectOnWorkerLost)
            && !retriesOnWorkerLost(job):
            // Python's reject_on_worker_lost: the message goes back to its queue, nothing is stored.
            logger.error("Task handler raised error: \(lost.pythonException.repr)")
            logger.warning("Task \(job.displayName)[\(message.id)] requeued: its pool process was lost (reject_on_worker_lost)")
            sendTaskEvent("task-rejected", message, ["requeue": true])
            if sendsTaskSignals { await postrun(.rejected, lost.pythonException.value) }
            await carryOut(machine.reject(requeue: true), for: job.delivery)
            return holdsPrefetch
        case .failure(let ignore as IgnoreTask):
            outcomeLogger.info("Task \(job.displayName)[\(message.id)] ignored")
            if sendsTaskSignals { await postrun(TaskState("IGNORED"), CeleryExceptionInfo(error: ignore).value) }
        case .success(let value):
            if storesResults {
                let stored = document(message, queue: queue, status: .success, result: value, ready: true, children: .array(children))
                if !message.isChordPart {
                    settler.submit(document: stored)
                } else {
                    await settler.store(stored)  // the chord join comes after the part's own result
                }
            }
            if sendsTaskSignals, !signals.taskSuccess.isEmpty {
                let success = WorkerSignals.TaskSuccess(request: request(for: job), result: value, runtime: runtime)
                await WorkerSignals.send(signals.taskSuccess, success, signal: "task_success", logger: logger)
            }
            outcomeLogger.info(
                "Task \(job.displayName)[\(message.id)] succeeded in \(runtime)s: \(PythonRepr.truncated(PythonRepr.repr(value)))")
            if configuration.deduplicateSuccessfulTasks { succeeded.withLock { $0.insert(message.id) } }
            sendTaskEvent(
                "task-succeeded", message,
                [
                    "result": .string(PythonRepr.truncated(PythonRepr.repr(value))), "runtime": .double(runtime),
                ])
            await chordPartReturn(job, state: .success, result: value)
            if sendsTaskSignals { await postrun(.success, value) }
        case .failure(let error):
            var failure = error
            if let request = retryRequest(for: error, job: job) {
                switch await retry(job, request, sent: children, logger: outcomeLogger) {
                case .success(let reason):
                    if sendsTaskSignals {
                        await postrun(.retry, CeleryExceptionInfo(type: "Retry", arguments: [.string(reason)], module: "celery.exceptions").value)
                    }
                    await carryOut(machine.finish(), for: job.delivery)
                    return holdsPrefetch
                case .failure(let exhausted):
                    failure = exhausted
                }
            }
            let exception = CeleryExceptionInfo(error: failure)
            let traceback: String?
            switch failure {
            case let timeout as HardTimeLimitExceeded:
                traceback = nil  // as Python: the pool stored the failure, not the task
                // `task_acks_on_timeout` (`task_acks_on_failure_or_timeout`) off: the message goes back to its queue.
                requeuesAfterTimeout = machine.acksLate && !configuration.acksOnTimeout
                logger.error("Hard time limit (\(PythonRepr.repr(.double(timeout.limit)))s) exceeded for \(job.displayName)[\(message.id)]")
            case let lost as WorkerLostError:
                traceback = nil
                logger.error("Task handler raised error: \(lost.pythonException.repr)")
            case let remote as RemoteTaskError:
                traceback = remote.traceback
            default:
                traceback = Self.traceback(task: message.name, exception: exception, error: failure)
            }
            let steps = failedChainSteps(message, exception: exception, traceback: traceback)
            if storesErrors(job) {
                let own = failureDocument(message, queue: queue, exception: exception, traceback: traceback, children: .array(children))
                await settler.store(own, following: steps)
            } else {
                await store(steps)
            }
            if sendsTaskSignals, !signals.taskFailure.isEmpty {
                let event = WorkerSignals.TaskFailure(request: request(for: job), exception: exception, traceback: traceback, error: failure)
                await WorkerSignals.send(signals.taskFailure, event, signal: "task_failure", logger: logger)
            }
            if let traceback {
                outcomeLogger.error("Task \(job.displayName)[\(message.id)] raised unexpected: \(exception.repr)\n\(traceback)")
            }
            sendTaskEvent(
                "task-failed", message, ["exception": .string(exception.repr), "traceback": traceback.map(CeleryValue.string) ?? .null])
            await chordPartReturn(job, state: .failure, result: exception.value)
            await sendErrbacks(of: job, exception: exception, traceback: traceback)
            if sendsTaskSignals { await postrun(.failure, exception.value) }
        }
        if requeuesAfterTimeout {
            logger.warning("Task \(job.displayName)[\(message.id)] requeued after its hard time limit (task_acks_on_timeout is off)")
            await carryOut(machine.reject(requeue: true), for: job.delivery)
            return holdsPrefetch
        }
        if machine.finish() == .ack {
            // acks-late: after the result, in the same settler batch or a later one; the task is done, so its
            // prefetch slot is free.
            settler.submit(ack: job.delivery)
            if holdsPrefetch { prefetch.release() }
            holdsPrefetch = false
        }
        return holdsPrefetch
    }

    /// Runs the task body in this job's task, on the task threads, or in a pool child with `--pool process` (which
    /// also enforces the hard limit). The body is cancelled, with this task, when its soft time limit passes or when
    /// a `revoke(terminate=True)` arrives (through `stop`), or by a cold shutdown; the second value says which stop
    /// was requested, if any.
    private func run(
        _ job: PreparedJob, _ context: TaskContext, softLimit: Double?, hardLimit: Double?, stop: StopRequest
    ) async -> (Result<CeleryValue, any Error>, StopReason?, child: String?) {
        stop.arm()
        let timer = softLimit.flatMap { limit -> Task<Void, Never>? in
            guard limit > 0 else { return nil }
            return Task {
                guard (try? await Task.sleep(for: .milliseconds(Int64(limit * 1000)))) != nil else { return }
                stop.request(.softTimeLimit)
            }
        }
        let result: Result<CeleryValue, any Error>
        var child: String?
        if let pool {
            (result, child) = await pool.run(job, context: context, hardLimit: hardLimit, stop: stop)
        } else {
            do {
                result = .success(try await job.task.handler(context))
            } catch {
                result = .failure(error)
            }
        }
        timer?.cancel()
        return (result, stop.seal(), child)
    }

    private func ignoresResult(_ job: PreparedJob) -> Bool {
        job.message.ignoreResult ?? job.task.options.ignoreResult
    }

    /// Python's `Request.store_errors`: FAILURE and RETRY are stored unless the result is ignored, and then too with
    /// `store_errors_even_if_ignored`.
    private func storesErrors(_ job: PreparedJob) -> Bool {
        !ignoresResult(job) || (job.task.options.storeErrorsEvenIfIgnored ?? configuration.storeErrorsEvenIfIgnored)
    }

    // MARK: Retries

    /// The retry a failure asks for: an explicit ``RetryTask``, or an error the task's `autoretry` accepts. Errors
    /// from a pool child were already matched against `autoretry` there.
    private func retryRequest(for error: any Error, job: PreparedJob) -> RetryTask? {
        if error is RemoteTaskError || error is TraceEncodeError { return nil }
        if error is WorkerLostError {
            // Never an autoretry (Python's runs in the child, which is gone); Celery 5.7's retry_on_worker_lost:
            // default_retry_delay and max_retries, and the loss itself once they run out.
            guard retriesOnWorkerLost(job) else { return nil }
            return RetryTask(countdown: job.task.options.defaultRetryDelay, cause: error)
        }
        return RetryTask.request(for: error, options: job.task.options, retries: job.message.retries)
    }

    private func retriesOnWorkerLost(_ job: PreparedJob) -> Bool {
        job.task.options.retryOnWorkerLost ?? configuration.retryOnWorkerLost
    }

    /// Python's `Task.retry`: republish the same id with `retries` + 1 and an ETA, then store RETRY and send
    /// `task_retry`. Returns the reason (`Retry in 5s`), or the error to fail with instead when retries are exhausted
    /// or the message cannot be republished.
    /// `sent` is what the task sent as it ran, listed in the RETRY document before the retry's own message.
    private func retry(_ job: PreparedJob, _ retry: RetryTask, sent: [CeleryValue], logger: Logger) async -> Result<String, any Error> {
        let message = job.message
        let queue = job.deliveryInfo.routingKey
        let maxRetries = retry.maxRetries ?? job.task.options.maxRetries
        if let maxRetries, message.retries + 1 > maxRetries {
            if let cause = retry.cause { return .failure(cause) }
            return .failure(
                PythonException(
                    type: "MaxRetriesExceededError", module: "celery.exceptions",
                    message:
                        "Can't retry \(message.name)[\(message.id)] args:\(PythonRepr.tuple(message.args)) kwargs:\(PythonRepr.repr(.object(message.kwargs)))"
                ))
        }
        guard case .success(let original) = job.delivery.envelope else { return .failure(retry.cause ?? retry) }
        let delay = retry.countdown ?? (retry.eta == nil ? job.task.options.defaultRetryDelay : nil)
        let eta = retry.eta ?? WallClock.now() + (delay ?? 0)
        do {
            // In the worker's task_serializer, as Python's `Task.retry` sends it, whatever the message came in.
            var resent = message
            resent.contentType = configuration.taskSerializer
            let envelope = try CeleryWorkerError.encoding { () throws(CeleryProtocolError) in
                try resent.retryEnvelope(
                    original: original, eta: CeleryTimestamp.isoformat(unixSeconds: eta),
                    origin: "gen\(Host.pid)@\(Host.name)", ignoreResult: ignoresResult(job),
                    deliveryTag: UUID().uuidString.lowercased(), compression: configuration.taskCompression)
            }
            try await signals.publishing(envelope, queue: queue, logger: logger) { envelope throws(CeleryWorkerError) in
                try await Self.publish(
                    configuration.sealed(envelope).encoded(), queue: queue, priority: original.deliveryInfo.priority, broker: service.broker,
                    delays: service.retryDelays)
                if configuration.sendSentEvent { await service.events?.sendTaskSent(envelope, queue: queue) }
            }
        } catch {
            logger.error("Task \(job.displayName)[\(message.id)] could not be republished for a retry: \(error.message)")
            return .failure(RejectTask(reason: "retry could not be published: \(error.message)", requeue: false))
        }
        let when = delay.map { "Retry in \(Self.seconds(text: $0))s" } ?? "Retry at \(CeleryTimestamp.isoformat(unixSeconds: eta))"
        let cause = retry.cause.map { CeleryExceptionInfo(error: $0) }
        let reason = cause.map { "\(when): \($0.repr)" } ?? when
        if storesErrors(job) {
            var document = document(message, queue: queue, status: .retry, result: cause?.value ?? .null, ready: false)
            document.traceback =
                "Traceback (most recent call last):\n  File \"<swift>\", line 0, in \(message.name)\ncelery.exceptions.Retry: \(reason)\n"
            document.children = .array(sent + [[[.string(message.id), .null], .null]])
            await store(document)
        }
        if sendsTaskSignals, !signals.taskRetry.isEmpty {
            await WorkerSignals.send(
                signals.taskRetry, WorkerSignals.TaskRetry(request: self.request(for: job), reason: reason, eta: eta), signal: "task_retry",
                logger: logger)
        }
        logger.info("Task \(job.displayName)[\(message.id)] retry: \(reason)")
        sendTaskEvent(
            "task-retried", message,
            [
                "exception": .string(cause?.repr ?? "None"),
                "traceback": .string(
                    "Traceback (most recent call last):\n  File \"<swift>\", line 0, in \(message.name)\ncelery.exceptions.Retry: \(reason)\n"),
            ])
        return .success(reason)
    }

    /// Seconds as Python prints a countdown: `180`, `0.1`.
    static func seconds(text value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : value.description
    }

    static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// A traceback in Python's shape, naming the Swift task where Python names the file and function.
    static func traceback(task: String, exception: CeleryExceptionInfo, error: any Error) -> String {
        var text = "Traceback (most recent call last):\n  File \"<swift>\", line 0, in \(task)\n"
        if !(error is any PythonConvertibleError) {
            text += "    Swift error: \(String(reflecting: error))\n"
        }
        return text + exception.tracebackLine + "\n"
    }

    // MARK: Results

    func document(
        _ message: CeleryTaskMessage, queue: String, status: TaskState, result: CeleryValue, ready: Bool,
        children: CeleryValue = []
    ) -> CeleryResultDocument {
        var extended = CeleryObject()
        if configuration.resultExtended {
            extended["name"] = .string(message.name)
            extended["args"] = .array(message.args)
            extended["kwargs"] = .object(message.kwargs)
            extended["worker"] = .string(configuration.nodeName)
            extended["retries"] = .int(Int64(message.retries))
            extended["queue"] = .string(queue)
            // A stamped message's `stamped_headers`, then its stamps that they name, as Celery 5.7 extends it.
            if let stamps = message.headers["stamps"]?.objectValue, !stamps.isEmpty {
                let stamped = message.headers["stamped_headers"] ?? .null
                extended["stamped_headers"] = stamped
                let names = stamped.arrayValue?.compactMap(\.stringValue) ?? []
                for (header, value) in stamps where names.contains(header) { extended[header] = value }
            }
        }
        return CeleryResultDocument(
            taskID: message.id, status: status, result: result, traceback: nil, children: children,
            dateDone: ready ? dateDoneNow() : nil,
            groupID: message.groupID, parentID: message.parentID, extended: extended)
    }

    /// Now, as Python writes `date_done` (`app.now().isoformat()`). From the run's own copy of the time zone: a
    /// call on the configuration copied the whole configuration (every string it holds) for every result.
    func dateDoneNow() -> String {
        timeZone.isoformat(unixSeconds: WallClock.now())
    }

    func failureDocument(
        _ message: CeleryTaskMessage, queue: String, exception: CeleryExceptionInfo, traceback: String?, children: CeleryValue = []
    ) -> CeleryResultDocument {
        var document = document(message, queue: queue, status: .failure, result: exception.value, ready: true, children: children)
        document.traceback = traceback
        return document
    }

    private func storeFailure(for error: CeleryProtocolError, exception: CeleryExceptionInfo) async {
        guard let id = error.taskID else { return }
        await store(
            CeleryResultDocument(
                taskID: id, status: .failure, result: exception.value, traceback: nil, children: [],
                dateDone: dateDoneNow()))
    }

    /// Stores a document, retrying while the backend is unreachable so that no result is dropped by a Redis
    /// restart.
    func store(_ document: CeleryResultDocument) async {
        await store([document])
    }

    func store(_ documents: [CeleryResultDocument]) async {
        guard let backend = service.backend, !documents.isEmpty else { return }
        let names = documents.map(\.taskID).joined(separator: ", ")
        let outcome = await retryingResultWrite(unreachable: "Result backend") { () throws(CeleryWorkerError) in
            try await backend.store(documents)
        }
        if let failure = outcome.failure, documents.count > 1, !failure.isTransient {
            // One document Redis refuses (one past its `proto-max-bulk-len`, say) must not cost the others theirs:
            // each is written alone, as Python writes each result.
            for document in documents { await store([document]) }
        } else if let failure = outcome.failure, let document = documents.first, !failure.isTransient, document.status.isReady,
            !document.isStoreFailure
        {
            // Refused for good: FAILURE in its place, so that a caller's `get()` raises rather than waits for ever.
            // Python's trace stores the error of its write too (after its retries), here Celery's `BackendStoreError`.
            logger.error("Cannot store the result of \(names): \(failure.message); storing FAILURE (BackendStoreError) in its place")
            var replacement = document
            replacement.status = .failure
            replacement.result = CeleryResultDocument.storeFailure(failure.message).value
            replacement.traceback = nil
            await store([replacement])
        } else if let failure = outcome.failure {
            logger.error("Cannot store the result of \(names): \(failure.message)")
        } else if outcome.retries > 0 {
            logger.info("Stored the result of \(names) after \(outcome.retries) retries")
        }
    }
}

extension CeleryResultDocument {
    /// The exception stored in place of a result the backend refused for good: Celery's `BackendStoreError`, as its
    /// backend raises it for a result it cannot write (`failed to store result on the backend`).
    static func storeFailure(_ reason: String) -> CeleryExceptionInfo {
        CeleryExceptionInfo(
            type: "BackendStoreError", arguments: [.string("failed to store result on the backend: \(reason)")], module: "celery.exceptions")
    }

    /// Whether this is such a replacement, so that one refused too is not replaced again.
    var isStoreFailure: Bool { status == .failure && result["exc_type"]?.stringValue == "BackendStoreError" }
}

/// Logger metadata keys, in one place.
public enum LogKeys {
    public static let taskID = "celery.task.id"
    public static let taskName = "celery.task.name"
    public static let queue = "celery.queue"
    /// The process a line is about (a process-pool child, `ForkPoolWorker-N`), in place of the handler's own.
    public static let processName = "celery.process.name"
}

extension Result where Success == KombuEnvelope, Failure == CeleryProtocolError {
    var deliveryInfo: DeliveryInfo {
        switch self {
        case .success(let envelope): envelope.deliveryInfo
        case .failure: DeliveryInfo(exchange: "", routingKey: "", priority: 0, redelivered: false)
        }
    }
}

extension WorkerRun: TaskStateReporter {
    /// A state a running task reports: stored as its own document (not ready, so no `date_done`).
    /// As Python's `update_state`, a state the result serializer cannot write (an integer beyond 64 bits in msgpack)
    /// raises kombu's `EncodeError` in the task.
    func report(_ state: TaskState, meta: CeleryValue, for request: TaskRequest) async throws {
        let document = document(request.message, queue: request.deliveryInfo.routingKey, status: state, result: meta, ready: false)
        guard document.fits(configuration.resultSerializer) else {
            throw CeleryWorkerError(code: .encodeError, message: TraceEncodeError.integerOutOfRange)
        }
        await store(document)
    }

    /// What a running task sent, kept for its result's `children` until its job finishes.
    func recordChild(_ node: CeleryValue, for request: TaskRequest) {
        trails.withLock { $0[request.id, default: []].append(node) }
    }
}

/// kombu's `EncodeError` after a task succeeded: its result, or a callback or chain step sent with it, holds what the
/// serializer cannot write (an integer beyond 64 bits in msgpack). Celery's trace fails the task with it, as
/// `on_error` does: never an autoretry. `message` is the wrapped error as Celery stores it.
struct TraceEncodeError: PythonConvertibleError {
    /// msgpack's error for an integer beyond 64 bits, as Celery stores it.
    static let integerOutOfRange = "OverflowError('Integer value out of range')"

    let message: String

    var pythonException: CeleryExceptionInfo { .encodeError(wrapping: message) }
}
