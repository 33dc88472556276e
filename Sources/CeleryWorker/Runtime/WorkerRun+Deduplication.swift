import CeleryProtocol

extension WorkerRun {
    /// Celery's `worker_deduplicate_successful_tasks`: an acks-late task whose message was redelivered does not run
    /// again when it already succeeded, here (Celery's `successful_requests`) or, by its stored `SUCCESS`, on any
    /// worker. Its message is acknowledged and a `task-succeeded` event sent, as Celery's trace does; the stored
    /// result stays as it is. As Celery 5.7 does, callbacks and chain steps the first run did not send (its stored
    /// document has no children) are sent now with the stored result. A result that cannot be read lets the task run,
    /// as in Celery. Returns whether the task was skipped.
    func skipsAsSucceeded(_ job: PreparedJob, _ machine: inout DeliveryStateMachine, since timeStart: Double) async -> Bool {
        guard machine.acksLate, job.deliveryInfo.redelivered, let backend = service.backend else { return false }
        let message = job.message
        if !succeeded.withLock({ $0.contains(message.id) }) {
            guard let document = try? await backend.storedDocument(of: message.id),
                document["status"]?.stringValue == TaskState.success.rawValue
            else { return false }
            logger.info("Task \(job.displayName)[\(message.id)] Task already completed successfully.")
            if message.hasCallbacksOrChain, document["children"]?.arrayValue?.isEmpty ?? true {
                _ = await sendFollowUps(job, result: document["result"] ?? .null)
            }
            succeeded.withLock { $0.insert(message.id) }
        }
        sendTaskEvent("task-succeeded", message, ["result": "None", "runtime": .double(WallClock.now() - timeStart)])
        await carryOut(machine.finish(), for: job.delivery)
        return true
    }
}
