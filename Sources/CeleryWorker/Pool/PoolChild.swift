import CeleryProtocol
import Dispatch
import Foundation
import Logging
import Synchronization

/// A pool child (`--pool process`): the worker binary started again by its worker, running one task at a time
/// for it. Jobs arrive on fd 3, outcomes leave on fd 4 (``PoolFrames``); it never talks to Redis.
///
/// `SIGUSR1` cancels the running task (the soft time limit). `SIGINT` is ignored, so a Ctrl-C in a terminal lets
/// the worker's warm shutdown finish the task. When the worker goes away the child exits, even in the middle of a
/// task.
struct PoolChild {
    let registry: TaskRegistry
    let configuration: WorkerConfiguration
    let logger: Logger
    let client: CeleryClient?

    /// What the signal handler and the pipe reader share with the job loop.
    private final class Shared: Sendable {
        let busy = Mutex(false)
        let current = Mutex<(task: Task<CeleryValue, any Error>?, cancelPending: Bool)>((nil, false))

        func cancelCurrent() {
            current.withLock { current in
                if let task = current.task { task.cancel() } else { current.cancelPending = true }
            }
        }
    }

    func run() async {
        signal(SIGINT, SIG_IGN)
        signal(SIGUSR1, SIG_IGN)
        let shared = Shared()
        let (jobs, continuation) = AsyncStream.makeStream(of: Job.self)
        let reader = Thread {
            while let frame = PoolFrames.read(from: PoolFrames.jobDescriptor), let raw = PoolFrames.readBytes(from: PoolFrames.jobDescriptor) {
                continuation.yield(Job(frame: frame, raw: raw))
            }
            // The worker closed the pipe: it is stopping, or it died. Never outlive it in a task.
            if shared.busy.withLock({ $0 }) { _exit(1) }
            continuation.finish()
        }
        reader.start()
        let cancelSource = DispatchSource.makeSignalSource(signal: SIGUSR1, queue: .global())
        cancelSource.setEventHandler { shared.cancelCurrent() }
        cancelSource.resume()
        let executor = WorkerThreads(count: 1, name: "celery-task")
        if !registry.signals.workerProcessInit.isEmpty {
            let event = WorkerSignals.WorkerEvent(hostname: configuration.nodeName)
            await withTaskExecutorPreference(executor) {
                await WorkerSignals.send(registry.signals.workerProcessInit, event, signal: "worker_process_init", logger: logger)
            }
        }
        // Blocking pipe writes run on the task thread, never on the cooperative pool.
        let ready = await withTaskExecutorPreference(executor) {
            PoolFrames.write(["ready": .int(Int64(getpid()))], to: PoolFrames.outcomeDescriptor)
        }
        if ready {
            // The loop runs on the task thread too: a job the reader hands over wakes that one thread, which decodes
            // it, runs its body and writes its outcome, with no hop to the cooperative pool and back in between.
            await withTaskExecutorPreference(executor) {
                for await job in jobs {
                    shared.busy.withLock { $0 = true }
                    let outcome = await runJob(job, executor: executor, shared: shared)
                    shared.current.withLock { $0 = (nil, false) }
                    shared.busy.withLock { $0 = false }
                    if !PoolFrames.write(outcome, to: PoolFrames.outcomeDescriptor) { break }
                }
            }
        }
        if !registry.signals.workerProcessShutdown.isEmpty {
            let event = WorkerSignals.WorkerEvent(hostname: configuration.nodeName)
            await withTaskExecutorPreference(executor) {
                await WorkerSignals.send(registry.signals.workerProcessShutdown, event, signal: "worker_process_shutdown", logger: logger)
            }
        }
        cancelSource.cancel()
        executor.shutdown()
    }

    /// A job from the worker: its frame and the message, as the worker received it.
    private struct Job: Sendable {
        let frame: CeleryValue
        let raw: [UInt8]
    }

    private func runJob(_ job: Job, executor: WorkerThreads, shared: Shared) async -> CeleryValue {
        let frame = job.frame
        let envelope: KombuEnvelope
        let message: CeleryTaskMessage
        do {
            envelope = try KombuEnvelope(decoding: job.raw)
            message = try configuration.taskMessage(envelope)
        } catch {
            let exception = CeleryExceptionInfo(type: "InvalidTaskError", arguments: [.string(error.message)], module: "celery.exceptions")
            return ["outcome": "failure", "exception": exception.value, "traceback": .null]
        }
        guard let task = registry[message.name] else {
            let exception = CeleryExceptionInfo(type: "NotRegistered", arguments: [.string(message.name)], module: "celery.exceptions")
            return ["outcome": "failure", "exception": exception.value, "traceback": .null]
        }
        let request = TaskRequest(
            message: message, deliveryInfo: envelope.deliveryInfo,
            hostname: frame["hostname"]?.stringValue ?? configuration.nodeName)
        let context = TaskContext(
            request: request, workerLogger: logger, client: client, stateReporter: ParentStates(resultSerializer: configuration.resultSerializer),
            fallbackPriority: configuration.fallbackPriority(parent: envelope.deliveryInfo.priority))
        let body = Task(executorPreference: executor) { try await task.handler(context) }
        let cancelNow = shared.current.withLock { current -> Bool in
            current.task = body
            return current.cancelPending
        }
        if cancelNow { body.cancel() }
        return PoolOutcome.frame(for: await body.result, task: task, retries: message.retries)
    }
}

/// Hands a state the task reports to the parent, which stores it. Runs on the task thread, like the body that
/// calls it.
private struct ParentStates: TaskStateReporter {
    let resultSerializer: CeleryContentType

    /// A state the result serializer cannot write raises kombu's `EncodeError` here, in the task, as in Python.
    func report(_ state: TaskState, meta: CeleryValue, for request: TaskRequest) async throws {
        guard resultSerializer == .json || meta.fitsMsgpack else {
            throw CeleryWorkerError(code: .encodeError, message: TraceEncodeError.integerOutOfRange)
        }
        write(["state": .string(state.rawValue), "meta": meta])
    }

    func recordChild(_ node: CeleryValue, for request: TaskRequest) {
        write(["child": node])
    }

    /// One frame at a time: a body may report from several tasks of its own at once.
    private func write(_ frame: CeleryValue) {
        frameWriting.withLock { _ in _ = PoolFrames.write(frame, to: PoolFrames.outcomeDescriptor) }
    }
}

/// Held while the child writes a state or child frame, so that two never interleave.
private let frameWriting = Mutex(())
