import CeleryProtocol

/// Where task states and results are written.
public protocol ResultBackend: Sendable {
    /// Stores the documents, each under its task id, and announces them to waiting clients. A document is not
    /// written over a stored `SUCCESS` (Python's rule, so a late duplicate never replaces a success).
    func store(_ documents: [CeleryResultDocument]) async throws(CeleryWorkerError)
    /// The stored state of a task; `nil` when nothing is stored (Python's PENDING).
    func status(of taskID: String) async throws(CeleryWorkerError) -> TaskState?
}
