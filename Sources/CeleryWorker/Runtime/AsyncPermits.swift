import Synchronization

/// A counting semaphore for async code: `acquire` waits for a permit, `release` hands one back, `close` wakes every
/// waiter with `false` (used at shutdown). Waiters are served first come, first served.
///
/// Its continuations are unchecked (a checked one allocates, and every task waits here): each is resumed exactly
/// once, by whoever removes its waiter from `waiters` under the lock (a release, `close`, or the cancellation
/// handler), or at once when it is never added.
final class AsyncPermits: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: UnsafeContinuation<Bool, Never>
    }

    private struct State {
        var available: Int
        var closed = false
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private let state: Mutex<State>
    /// Whether a waiter that `release` resumes goes to the front of a leader-mode ``WorkerThreads`` set's queue.
    private let resumesFirst: Bool

    /// - Parameter resumesFirst: a waiter resumed by ``release(_:)`` runs before the jobs already queued on a
    ///   leader-mode ``WorkerThreads`` set (see ``WorkerThreads/resumingFirst(_:)``). For the prefetch permits: the
    ///   fetch loop, resumed as soon as a permit frees, then sends its pop before the leader runs the tasks queued
    ///   meanwhile, and Redis works on the pop while the leader runs them.
    init(_ count: Int, resumesFirst: Bool = false) {
        state = Mutex(State(available: count))
        self.resumesFirst = resumesFirst
    }

    /// Waits for a permit. Returns `false` without one when closed or when the waiting task is cancelled.
    func acquire() async -> Bool {
        // A free permit and nobody before us: taken at once, without suspending or a cancellation handler.
        let id = state.withLock { state -> UInt64? in
            if !state.closed, state.available > 0, state.waiters.isEmpty, !Task.isCancelled {
                state.available -= 1
                return nil
            }
            state.nextID += 1
            return state.nextID
        }
        guard let id else { return true }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Bool, Never>) in
                let immediate: Bool? = state.withLock { state in
                    if state.closed || Task.isCancelled { return false }
                    if state.available > 0, state.waiters.isEmpty {
                        state.available -= 1
                        return true
                    }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: false)
        }
    }

    /// Takes up to `limit` permits that are free right now, without waiting; returns how many it took.
    func tryAcquire(upTo limit: Int) -> Int {
        state.withLock { state in
            guard !state.closed, state.waiters.isEmpty else { return 0 }
            let taken = max(0, min(limit, state.available))
            state.available -= taken
            return taken
        }
    }

    /// Returns `count` permits, waking waiters in order.
    func release(_ count: Int = 1) {
        // The first waiter apart: usually the only one, woken without allocating an array.
        let (first, others) = state.withLock { state -> (Waiter?, [Waiter]) in
            state.available += count
            guard state.available > 0, !state.waiters.isEmpty else { return (nil, []) }
            state.available -= 1
            let first = state.waiters.removeFirst()
            var others: [Waiter] = []
            while state.available > 0, !state.waiters.isEmpty {
                state.available -= 1
                others.append(state.waiters.removeFirst())
            }
            return (first, others)
        }
        if let first {
            if resumesFirst {
                WorkerThreads.resumingFirst { first.continuation.resume(returning: true) }
            } else {
                first.continuation.resume(returning: true)
            }
        }
        for waiter in others { waiter.continuation.resume(returning: true) }
    }

    /// Takes `count` permits out of circulation without waiting: free ones at once, the rest as they are released
    /// (until then `available` is below zero and nobody acquires). How a pool shrinks while its slots are busy.
    func withdraw(_ count: Int) {
        state.withLock { $0.available -= count }
    }

    /// Refuses every current and future `acquire`.
    func close() {
        let woken = state.withLock { state -> [Waiter] in
            state.closed = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in woken { waiter.continuation.resume(returning: false) }
    }

    /// Permits not handed out now.
    var available: Int { state.withLock { $0.available } }
}
