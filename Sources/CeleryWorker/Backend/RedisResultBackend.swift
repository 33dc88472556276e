import CeleryProtocol

/// Celery's Redis result backend: `celery-task-meta-<id>` written with `SETEX` (or `SET` when results never expire)
/// and `PUBLISH`ed on a channel of the same name in one `MULTI`, after a `GET` that keeps a stored `SUCCESS`.
public final class RedisResultBackend: ResultBackend {
    let client: RedisClient
    /// The serializer Python readers are configured with (`result_serializer`).
    public let serializer: CeleryContentType
    /// `result_expires` in seconds; `nil` or 0 stores results without a TTL.
    public let expires: Int?
    /// `global_keyprefix`, already normalized (a `_` appended unless it ends in `:`, `_`, `-` or `.`).
    public let keyPrefix: String

    public init(client: RedisClient, serializer: CeleryContentType = .json, expires: Int? = 86_400, keyPrefix: String = "") {
        self.client = client
        self.serializer = serializer
        self.expires = expires
        self.keyPrefix = keyPrefix
    }

    /// The key (and channel) of a task's result.
    public func key(for taskID: String) -> String {
        keyPrefix + "celery-task-meta-" + taskID
    }

    public func status(of taskID: String) async throws(CeleryWorkerError) -> TaskState? {
        guard let stored = try await client.send(RedisCommand("GET", RedisArgument(key(for: taskID)))).bytes else { return nil }
        return CeleryResultDocument.storedStatus(stored, serializer: serializer)
    }

    public func store(_ documents: [CeleryResultDocument]) async throws(CeleryWorkerError) {
        guard !documents.isEmpty else { return }
        let keys = documents.map { key(for: $0.taskID) }
        let stored = try await client.pipeline(keys.map { RedisCommand("GET", RedisArgument($0)) })
        var writes: [RedisCommand] = []
        for (index, document) in documents.enumerated() {
            let current = index < stored.count ? stored[index].bytes : nil
            if let current, CeleryResultDocument.storedStatus(current, serializer: serializer) == .success {
                continue
            }
            let bytes = RedisArgument(document.encoded(as: serializer))
            let key = RedisArgument(keys[index])
            if let expires, expires > 0 {
                writes.append(RedisCommand("SETEX", key, RedisArgument(expires), bytes))
            } else {
                writes.append(RedisCommand("SET", key, bytes))
            }
            writes.append(RedisCommand("PUBLISH", key, bytes))
        }
        guard !writes.isEmpty else { return }
        try await client.transaction(writes)
    }
}
