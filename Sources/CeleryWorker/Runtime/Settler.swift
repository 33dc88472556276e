import CeleryProtocol
import Dispatch
import Synchronization

/// Write-behind for the two Redis writes every task makes: its result document (to the backend) and its
/// acknowledgement (to the broker). Whatever the running tasks hand in while a flush is under way goes out in the
/// next one, in the order ``Phases`` gives: with the broker on the backend's Redis server, the whole batch in one
/// script; otherwise every document in one script and every acknowledgement in one `MULTI`. A task's slot is free as
/// soon as it handed its writes in, so under load many tasks share each round trip.
///
/// Order is kept where it matters: an acknowledgement handed in after a document (acks-late) is never sent before
/// it. At idle, a task's early acknowledgement waits up to ``linger`` for its result, so both share one write. Writes are retried while Redis is unreachable, as the direct ones are; ``finish()`` drains everything at
/// shutdown before the worker exits.
final class Settler: Sendable {
    /// One task's writes. A class: the batch goes through several passes and hand-offs, and copying a reference
    /// costs one count where copying the document and the delivery cost one per string and array they hold.
    final class Entry: Sendable {
        let document: CeleryResultDocument?
        /// Documents written in the same batch right after `document`, so in the same atomic script (a failed
        /// chain step's remaining steps). Empty for almost every task: an empty array allocates nothing.
        let following: [CeleryResultDocument]
        let ack: BrokerDelivery?
        /// An acknowledgement made when the task started (acks_late off): written before the batch's results.
        let early: Bool
        let done: @Sendable () -> Void

        init(
            document: CeleryResultDocument?, following: [CeleryResultDocument] = [], ack: BrokerDelivery?,
            early: Bool = false, done: @escaping @Sendable () -> Void
        ) {
            self.document = document
            self.following = following
            self.ack = ack
            self.early = early
            self.done = done
        }
    }

    /// A batch in the order it is written: early acknowledgements, then results, then the others. Python acknowledges
    /// before it runs a task, so a result must never be visible while its early-acknowledged message is still in
    /// `unacked`; an acks-late acknowledgement comes after its result, so a crash in between loses nothing.
    struct Phases {
        var earlyAcks: [BrokerDelivery] = []
        var documents: [CeleryResultDocument] = []
        var lateAcks: [BrokerDelivery] = []

        init(_ batch: [Entry]) {
            // Counted first, so each array is allocated once.
            var counts = (early: 0, documents: 0, late: 0)
            for entry in batch {
                if entry.document != nil { counts.documents += 1 + entry.following.count }
                if entry.ack != nil {
                    if entry.early { counts.early += 1 } else { counts.late += 1 }
                }
            }
            earlyAcks.reserveCapacity(counts.early)
            documents.reserveCapacity(counts.documents)
            lateAcks.reserveCapacity(counts.late)
            for entry in batch {
                if let document = entry.document {
                    documents.append(document)
                    documents.append(contentsOf: entry.following)
                }
                if let ack = entry.ack {
                    if entry.early { earlyAcks.append(ack) } else { lateAcks.append(ack) }
                }
            }
        }
    }

    private struct State {
        var entries: [Entry] = []
        /// The settler waiting for entries. Unchecked (a checked one allocates, once per batch): it is resumed exactly
        /// once, by whoever takes it out of the state under the lock.
        var waiter: UnsafeContinuation<Void, Never>?
        var finished = false
        /// The settler waits for company for a batch of early acknowledgements (see ``run(lingering:flush:)``).
        var lingering = false
    }

    private let state = Mutex(State())
    /// Signalled when an entry arrives while the settler lingers.
    private let company = DispatchSemaphore(value: 0)
    /// How long a batch of only early acknowledgements waits at most for more entries.
    let linger: Duration

    init(linger: Duration = .milliseconds(1)) {
        self.linger = linger
    }

    /// Hands in a document to store (with `following`, stored right after it in the same atomic write) and/or a
    /// delivery to acknowledge (`early`: acknowledged as the task starts); `done` runs once all are written.
    func submit(
        document: CeleryResultDocument? = nil, following: [CeleryResultDocument] = [], ack: BrokerDelivery? = nil,
        early: Bool = false, done: @escaping @Sendable () -> Void = {}
    ) {
        let (waiter, lingering) = state.withLock { state -> (UnsafeContinuation<Void, Never>?, Bool) in
            state.entries.append(Entry(document: document, following: following, ack: ack, early: early, done: done))
            defer {
                state.waiter = nil
                state.lingering = false
            }
            return (state.waiter, state.lingering)
        }
        waiter?.resume()
        if lingering { company.signal() }
    }

    /// Ends a linger at once: the task whose early acknowledgement waits for company has ended without a result to
    /// store (its acknowledgement goes out now).
    func nudge() {
        let lingering = state.withLock { state -> Bool in
            defer { state.lingering = false }
            return state.lingering
        }
        if lingering { company.signal() }
    }

    /// Hands in a document (and `following`, stored right after it in the same atomic write) and waits until they
    /// are stored.
    func store(_ document: CeleryResultDocument, following: [CeleryResultDocument] = []) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            submit(document: document, following: following) { continuation.resume() }
        }
    }

    /// No more entries will come: ``run(lingering:flush:)`` returns once everything handed in is written.
    func finish() {
        let (waiter, lingering) = state.withLock { state -> (UnsafeContinuation<Void, Never>?, Bool) in
            state.finished = true
            defer {
                state.waiter = nil
                state.lingering = false
            }
            return (state.waiter, state.lingering)
        }
        waiter?.resume()
        if lingering { company.signal() }
    }

    /// Takes batches and writes them with `flush` until ``finish()`` and an empty queue.
    ///
    /// With `lingering` (only on a thread of the caller's own, never on Swift's cooperative pool: it blocks), a batch
    /// of nothing but early acknowledgements waits up to ``linger`` for more entries before it is written. Such a
    /// batch means tasks just started, and a short task's result follows within microseconds: then the
    /// acknowledgement and the result go out in one write instead of two round trips one after the other. A long
    /// task's acknowledgement is held back by ``linger`` at most.
    ///
    /// With `idle` (the event loop of the solo and thread pools, which the calling task must prefer), a batch is
    /// taken only once the loop has nothing else queued: it holds the results of every task that ran until then.
    func run(lingering: Bool = false, idle: WorkerThreads? = nil, flush: ([Entry]) async -> Void) async {
        while true {
            let batch = await next(lingering: lingering, idle: idle)
            if batch.isEmpty { return }
            await flush(batch)
            for entry in batch { entry.done() }
        }
    }

    private func take() -> (batch: [Entry], finished: Bool) {
        state.withLock { state -> ([Entry], Bool) in
            defer { state.entries.removeAll(keepingCapacity: true) }
            return (state.entries, state.finished)
        }
    }

    private func next(lingering: Bool, idle: WorkerThreads?) async -> [Entry] {
        while true {
            await idle?.whenIdle()
            var (batch, finished) = take()
            if lingering, !finished, !batch.isEmpty, batch.allSatisfy({ $0.early && $0.document == nil }) {
                let armed = state.withLock { state -> Bool in
                    state.lingering = state.entries.isEmpty && !state.finished
                    return state.lingering
                }
                if armed {
                    let (seconds, attoseconds) = linger.components
                    let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
                    _ = company.wait(timeout: .now() + .nanoseconds(nanoseconds))
                    state.withLock { $0.lingering = false }
                }
                let more = take()
                batch += more.batch
                finished = more.finished
            }
            if !batch.isEmpty || finished { return batch }
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
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
