import Synchronization

/// A counting semaphore for async code: `acquire` waits for a permit, `gather` for several, `release` hands them
/// back, `close` wakes every waiter (used at shutdown). Waiters are served first come, first served.
///
/// Its continuations are unchecked (a checked one allocates, and every task waits here): each is resumed exactly
/// once, by whoever removes its waiter from `waiters` under the lock (a release, `close`, or the cancellation
/// handler), or at once when it is never added.
final class AsyncPermits: Sendable {
    private struct Waiter {
        let id: UInt64
        var kind: Kind

        enum Kind {
            case one(UnsafeContinuation<Bool, Never>)
            /// A ``gather(upTo:until:)``: the permits it took so far, how many it wants, and when it stops early.
            case several(
                taken: Int, wanted: Int, until: @Sendable () -> Bool, UnsafeContinuation<(taken: Int, open: Bool), Never>)
        }

        /// Resumes the waiter as closed or cancelled: no permit for `acquire`, those taken so far for `gather`.
        func refuse() {
            switch kind {
            case .one(let continuation): continuation.resume(returning: false)
            case .several(let taken, _, _, let continuation): continuation.resume(returning: (taken, false))
            }
        }
    }

    private struct State {
        var available: Int
        var closed = false
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private let state: Mutex<State>

    init(_ count: Int) {
        state = Mutex(State(available: count))
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
                    state.waiters.append(Waiter(id: id, kind: .one(continuation)))
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            cancelWaiter(id)
        }
    }

    /// Waits until it took `wanted` permits (at least one), or took some and `until` holds: `until` is checked each
    /// time a release hands it permits, under this object's lock (it must be quick and must not use this object).
    /// Returns how many it took, and `false` when it stopped because the semaphore was closed or the waiting task
    /// cancelled (the permits taken until then are still returned, for the caller to give back).
    ///
    /// For a loop that wants a batch: one wake-up for the whole batch, where a loop of ``acquire()`` wakes for each
    /// permit.
    func gather(upTo wanted: Int, until: @escaping @Sendable () -> Bool) async -> (taken: Int, open: Bool) {
        let wanted = max(1, wanted)
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<(taken: Int, open: Bool), Never>) in
                let immediate = state.withLock { state -> (taken: Int, open: Bool)? in
                    if state.closed || Task.isCancelled { return (0, false) }
                    var taken = 0
                    if state.waiters.isEmpty {
                        taken = min(wanted, state.available)
                        state.available -= taken
                        if taken == wanted || (taken > 0 && until()) { return (taken, true) }
                    }
                    state.waiters.append(Waiter(id: id, kind: .several(taken: taken, wanted: wanted, until: until, continuation)))
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            cancelWaiter(id)
        }
    }

    private func cancelWaiter(_ id: UInt64) {
        let waiter = state.withLock { state -> Waiter? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index)
        }
        waiter?.refuse()
    }

    /// Takes up to `limit` permits that are free right now, without waiting; returns how many it took.
    func tryAcquire(upTo limit: Int) -> Int {
        state.withLock { state in
            guard !state.closed, state.waiters.isEmpty else { return 0 }
            let taken = min(limit, state.available)
            state.available -= taken
            return taken
        }
    }

    /// Returns `count` permits, handing them to waiters in order.
    func release(_ count: Int = 1) {
        // The first waiter served apart: usually the only one, woken without allocating an array.
        let (first, others) = state.withLock { state -> (Served?, [Served]) in
            state.available += count
            var first: Served?
            var others: [Served] = []
            while state.available > 0, !state.waiters.isEmpty {
                let served: Served
                switch state.waiters[0].kind {
                case .one(let continuation):
                    state.available -= 1
                    served = .one(continuation)
                case .several(var taken, let wanted, let until, let continuation):
                    let more = min(wanted - taken, state.available)
                    state.available -= more
                    taken += more
                    guard taken == wanted || until() else {
                        // Keeps its place, and what it took; nobody after it is served before it is.
                        state.waiters[0].kind = .several(taken: taken, wanted: wanted, until: until, continuation)
                        return (first, others)
                    }
                    served = .several(taken, continuation)
                }
                state.waiters.removeFirst()
                if first == nil { first = served } else { others.append(served) }
            }
            return (first, others)
        }
        first?.resume()
        for waiter in others { waiter.resume() }
    }

    /// A waiter taken out of the line with its permits, to be resumed outside the lock.
    private enum Served {
        case one(UnsafeContinuation<Bool, Never>)
        case several(Int, UnsafeContinuation<(taken: Int, open: Bool), Never>)

        func resume() {
            switch self {
            case .one(let continuation): continuation.resume(returning: true)
            case .several(let taken, let continuation): continuation.resume(returning: (taken, true))
            }
        }
    }

    /// Refuses every current and future `acquire`.
    func close() {
        let woken = state.withLock { state -> [Waiter] in
            state.closed = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in woken { waiter.refuse() }
    }

    /// Permits not handed out now.
    var available: Int { state.withLock { $0.available } }
}
