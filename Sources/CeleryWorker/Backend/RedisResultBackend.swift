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

    /// Every document in one round trip: a script does Python's steps for each (`GET`; unless the stored state is
    /// SUCCESS, `SETEX` (or `SET`) and `PUBLISH`), atomically.
    public func store(_ documents: [CeleryResultDocument]) async throws(CeleryWorkerError) {
        guard !documents.isEmpty else { return }
        // Encoded on the connection's thread, where the write happens, not on the caller's.
        _ = try await client.withConnection { [self] connection throws(CeleryWorkerError) in
            var arguments = [RedisArgument(expires ?? 0), RedisArgument(serializer.serializerName)]
            arguments.append(contentsOf: documents.map { RedisArgument($0.encoded(as: serializer)) })
            return try connection.evaluate(
                Self.storeScript, keys: documents.map { RedisArgument(key(for: $0.taskID)) }, arguments: arguments)
        }
    }

    /// KEYS: result keys; ARGV: expires (0: none), serializer name, one document per key.
    static let storeScript = RedisScript(
        """
        local expires = tonumber(ARGV[1])
        local decode = ARGV[2] == 'msgpack' and cmsgpack.unpack or cjson.decode
        for i, key in ipairs(KEYS) do
            local document = ARGV[i + 2]
            local current = redis.call('GET', key)
            local keep = false
            if current then
                local ok, stored = pcall(decode, current)
                keep = ok and type(stored) == 'table' and stored['status'] == 'SUCCESS'
            end
            if not keep then
                if expires > 0 then
                    redis.call('SETEX', key, expires, document)
                else
                    redis.call('SET', key, document)
                end
                redis.call('PUBLISH', key, document)
            end
        end
        return 0
        """)
}
