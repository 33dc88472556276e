import DequeModule
import Synchronization

/// A queue from one producing loop to one consuming loop: the worker's fetch → receive → dispatch hand-offs, a batch
/// at a time. It does what `AsyncStream` did there for less: its code is specialised for its element type (the
/// standard library's stream runs as generic code, looking up metadata on every element), and an element that is
/// waiting is taken without suspending.
///
/// As with a stream, ``next()`` returns `nil` once ``finish()`` was called and everything before it was taken, or
/// when the consuming task is cancelled; an element yielded after ``finish()`` is dropped.
///
/// The waiting consumer's continuation is unchecked (a checked one allocates, once per wait): it is resumed exactly
/// once, by whoever takes it out of the state under the lock (``yield(_:)``, ``finish()`` or the cancellation
/// handler), or at once when it is never stored.
final class Handoff<Element: Sendable>: Sendable {
    private struct State {
        var items = Deque<Element>()
        var waiter: UnsafeContinuation<Element?, Never>?
        var finished = false
    }

    private let state = Mutex(State())

    init() {}

    /// Hands `element` to the consumer, waking it if it waits.
    func yield(_ element: Element) {
        let waiter = state.withLock { state -> UnsafeContinuation<Element?, Never>? in
            guard !state.finished else { return nil }
            guard let waiter = state.waiter else {
                state.items.append(element)
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume(returning: element)
    }

    /// No more elements will come: the consumer gets what is queued, then `nil`.
    func finish() {
        let waiter = state.withLock { state -> UnsafeContinuation<Element?, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// The next element, waiting for one; `nil` once finished and drained, or when the calling task is cancelled.
    func next() async -> Element? {
        let queued = state.withLock { state -> Element? in
            Task.isCancelled ? nil : state.items.popFirst()
        }
        if let queued { return queued }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Element?, Never>) in
                let ready = state.withLock { state -> Element?? in
                    if Task.isCancelled { return .some(nil) }
                    if let item = state.items.popFirst() { return .some(item) }
                    if state.finished { return .some(nil) }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> UnsafeContinuation<Element?, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }
}
