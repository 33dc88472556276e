import CeleryProtocol

/// Where task states and results are written.
public protocol ResultBackend: Sendable {
    /// Stores the documents, each under its task id, and announces them to waiting clients. A document is not
    /// written over a stored `SUCCESS` (Python's rule, so a late duplicate never replaces a success).
    func store(_ documents: [CeleryResultDocument]) async throws(CeleryWorkerError)
    /// The stored state of a task; `nil` when nothing is stored (Python's PENDING).
    func status(of taskID: String) async throws(CeleryWorkerError) -> TaskState?
    /// The stored result document of a task, decoded (`status`, `result`, `children` …), as Python's
    /// `_get_task_meta()` reads it; `nil` when nothing is stored.
    func storedDocument(of taskID: String) async throws(CeleryWorkerError) -> CeleryValue?
    /// Records a chord header part; returns the completion when this part completes the chord and this worker
    /// claimed sending the body under `token`. A call repeated with the same token (its reply lost to a dropped
    /// connection) records nothing twice and finds the claim it took still its own.
    func chordPartReturn(
        groupID: String, taskID: String, groupIndex: Int?, state: TaskState, result: CeleryValue, token: String
    ) async throws(CeleryWorkerError) -> ChordCompletion?
    /// Extends this worker's claim to send a chord's body for as long as sending may take, or takes it again when it
    /// expired while the chord's state is still there (Celery 5.7's step before it publishes the body); `false` when
    /// another worker holds it or the chord is gone, and the body must not be sent.
    func extendChordClaim(groupID: String, token: String) async throws(CeleryWorkerError) -> Bool
    /// Releases the claim and removes the chord's state once the body was sent.
    func chordFinished(groupID: String, token: String) async throws(CeleryWorkerError)
    /// Drops the chord size after a failed join, so a late copy of a header task does not fail the chord again.
    func chordFailed(groupID: String) async throws(CeleryWorkerError)
    /// Stores how many header parts a chord has, before its header is sent.
    func setChordSize(groupID: String, size: Int) async throws(CeleryWorkerError)
    /// Counts one more part in a chord whose header is running (Celery's `add_to_chord`: `INCR` of the `.t` key).
    func addToChord(groupID: String) async throws(CeleryWorkerError)
    /// Saves a chord header whose results include groups (`GroupResult.as_tuple()`), as Celery's `apply_chord`
    /// does, so that whichever worker completes the chord joins the results in that shape.
    func saveGroup(groupID: String, result: CeleryValue) async throws(CeleryWorkerError)
}

/// A chord whose last header part was just recorded: the header results to join, and the claim that makes this
/// worker the only one to send the body.
public struct ChordCompletion: Sendable {
    /// One header part: its task id, state and result (the exception dict for a failure).
    public struct Part: Sendable {
        public var taskID: String
        public var state: TaskState
        public var result: CeleryValue
    }

    /// The header results in `group_index` order.
    public var parts: [Part]
    /// The claim token, released by ``ResultBackend/chordFinished(groupID:token:)``.
    public var token: String
    /// The header's `GroupResult` as Celery saved it when one of its results is a group (`GroupResult.as_tuple()`
    /// under `celery-taskset-meta-<group>`, written by `apply_chord`): the body then gets the results in that shape.
    public var savedHeader: CeleryValue?
    /// Results of the saved header's tasks that are not among ``parts``, read from their result documents.
    public var storedResults: [Part]

    /// A completion as a backend reports it; ``savedHeader`` and ``storedResults`` only for a saved header.
    public init(parts: [Part], token: String, savedHeader: CeleryValue? = nil, storedResults: [Part] = []) {
        self.parts = parts
        self.token = token
        self.savedHeader = savedHeader
        self.storedResults = storedResults
    }
}

/// A backend without chord support keeps no chord state.
extension ResultBackend {
    /// A document of the stored state alone, for a backend that keeps nothing else.
    public func storedDocument(of taskID: String) async throws(CeleryWorkerError) -> CeleryValue? {
        try await status(of: taskID).map { ["status": .string($0.rawValue)] }
    }

    public func chordPartReturn(
        groupID: String, taskID: String, groupIndex: Int?, state: TaskState, result: CeleryValue, token: String
    ) async throws(CeleryWorkerError) -> ChordCompletion? { nil }
    public func extendChordClaim(groupID: String, token: String) async throws(CeleryWorkerError) -> Bool { true }
    public func chordFinished(groupID: String, token: String) async throws(CeleryWorkerError) {}
    public func chordFailed(groupID: String) async throws(CeleryWorkerError) {}
    public func setChordSize(groupID: String, size: Int) async throws(CeleryWorkerError) {}
    public func saveGroup(groupID: String, result: CeleryValue) async throws(CeleryWorkerError) {}
    public func addToChord(groupID: String) async throws(CeleryWorkerError) {}
}
