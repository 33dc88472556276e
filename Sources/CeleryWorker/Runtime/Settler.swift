import CeleryProtocol
import Synchronization

/// Write-behind for the two Redis writes every task makes: its result document (to the backend) and its
/// acknowledgement (to the broker). Whatever the running tasks hand in while a flush is under way goes out in the
/// next one, in the order ``Phases`` gives: with the broker on the backend's Redis server, the whole batch in one
/// script; otherwise every document in one script and every acknowledgement in one `MULTI`. A task's slot is free as
/// soon as it handed its writes in, so under load many tasks share each round trip.
///
/// Order is kept where it matters: an acknowledgement handed in after a document (acks-late) is never sent before
/// it. Writes are retried while Redis is unreachable, as the direct ones are; ``finish()`` drains everything at
/// shutdown before the worker exits.
final class Settler: Sendable {
    struct Entry: Sendable {
        var document: CeleryResultDocument?
        var ack: BrokerDelivery?
        /// An acknowledgement made when the task started (acks_late off): written before the batch's results.
        var early = false
        var done: @Sendable () -> Void
    }

    /// A batch in the order it is written: early acknowledgements, then results, then the others. Python acknowledges
    /// before it runs a task, so a result must never be visible while its early-acknowledged message is still in
    /// `unacked`; an acks-late acknowledgement comes after its result, so a crash in between loses nothing.
    struct Phases {
        var earlyAcks: [BrokerDelivery] = []
        var documents: [CeleryResultDocument] = []
        var lateAcks: [BrokerDelivery] = []

        init(_ batch: [Entry]) {
            for entry in batch {
                if let document = entry.document { documents.append(document) }
                if let ack = entry.ack {
                    if entry.early { earlyAcks.append(ack) } else { lateAcks.append(ack) }
                }
            }
        }
    }

    private struct State {
        var entries: [Entry] = []
        var waiter: CheckedContinuation<Void, Never>?
        var finished = false
        /// A wake-up is on its way for entries handed in by ``submitEarlyAck(_:)``.
        var nudgeScheduled = false
    }

    private let state = Mutex(State())
    /// How long an early acknowledgement handed in by ``submitEarlyAck(_:)`` waits at most for company.
    let linger: Duration

    init(linger: Duration = .milliseconds(1)) {
        self.linger = linger
    }

    /// Hands in a document to store and/or a delivery to acknowledge (`early`: acknowledged as the task starts);
    /// `done` runs once both are written.
    func submit(
        document: CeleryResultDocument? = nil, ack: BrokerDelivery? = nil, early: Bool = false,
        done: @escaping @Sendable () -> Void = {}
    ) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.entries.append(Entry(document: document, ack: ack, early: early, done: done))
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Hands in the acknowledgement of a task that is starting (acks_late off) without waking the settler: the
    /// task's result usually follows within microseconds, and then both go out in one write. The settler wakes for
    /// the next entry handed in, for ``nudge()`` (at the end of the task), or after ``linger`` at the latest, so a
    /// long task's acknowledgement is not held back for its duration.
    func submitEarlyAck(_ ack: BrokerDelivery) {
        let schedule = state.withLock { state -> Bool in
            state.entries.append(Entry(document: nil, ack: ack, early: true, done: {}))
            guard state.waiter != nil, !state.nudgeScheduled else { return false }
            state.nudgeScheduled = true
            return true
        }
        guard schedule else { return }
        let linger = self.linger
        Task { [self] in
            try? await Task.sleep(for: linger)
            nudge()
        }
    }

    /// Wakes the settler if it is waiting while entries are queued.
    func nudge() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.nudgeScheduled = false
            guard !state.entries.isEmpty else { return nil }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Hands in a document and waits until it is stored.
    func store(_ document: CeleryResultDocument) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            submit(document: document) { continuation.resume() }
        }
    }

    /// No more entries will come: ``run(flush:)`` returns once everything handed in is written.
    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Takes batches and writes them with `flush` until ``finish()`` and an empty queue.
    func run(flush: ([Entry]) async -> Void) async {
        while true {
            let batch = await next()
            if batch.isEmpty { return }
            await flush(batch)
            for entry in batch { entry.done() }
        }
    }

    private func next() async -> [Entry] {
        while true {
            let (batch, finished) = state.withLock { state -> ([Entry], Bool) in
                defer { state.entries.removeAll(keepingCapacity: true) }
                return (state.entries, state.finished)
            }
            if !batch.isEmpty || finished { return batch }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if !state.entries.isEmpty || state.finished { return true }
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        }
    }
}
