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
        keyPrefix + Self.keyStem + taskID
    }

    /// What every result key holds between the prefix and the task id.
    static let keyStem = "celery-task-meta-"

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
            var arguments = RESPArguments(capacity: 64 + 384 * documents.count)
            for document in documents { arguments.append(keyPrefix, Self.keyStem, document.taskID) }
            arguments.append(expires ?? 0)
            arguments.append(serializer.serializerName)
            for document in documents { arguments.append { document.encode(as: serializer, into: &$0) } }
            return try connection.evaluate(Self.storeScript, keyCount: documents.count, arguments: arguments)
        }
    }

    /// Python's steps for one document, as a Lua function shared by the scripts that store results: `GET`; unless
    /// the stored state is SUCCESS, `SETEX` (or `SET` when `expires` is 0) and `PUBLISH`.
    static let storeFunction = """
        local function store(key, document, expires, decode)
            local current = redis.call('GET', key)
            if current then
                local ok, stored = pcall(decode, current)
                if ok and type(stored) == 'table' and stored['status'] == 'SUCCESS' then return end
            end
            if expires > 0 then
                redis.call('SETEX', key, expires, document)
            else
                redis.call('SET', key, document)
            end
            redis.call('PUBLISH', key, document)
        end
        local function decoder(name) return name == 'msgpack' and cmsgpack.unpack or cjson.decode end

        """

    /// KEYS: result keys; ARGV: expires (0: none), serializer name, one document per key.
    static let storeScript = RedisScript(
        storeFunction + """
            local expires, decode = tonumber(ARGV[1]), decoder(ARGV[2])
            for i, key in ipairs(KEYS) do store(key, ARGV[i + 2], expires, decode) end
            return 0
            """)

    // MARK: Results and acknowledgements together

    /// Whether `broker` is on the same Redis server as this backend (whatever the databases), so that one script
    /// can write a settler batch: its acknowledgements and its results.
    func sharesServer(with broker: RedisBroker) -> Bool {
        let mine = client.url
        let theirs = broker.commands.url
        return mine.endpoint == theirs.endpoint && mine.username == theirs.username && mine.password == theirs.password
    }

    /// Writes a settler batch in one round trip and one atomic script, in its order: acknowledges `earlyAcks`,
    /// stores `documents` (as ``store(_:)`` does), then acknowledges `lateAcks`. An acknowledgement is kombu's,
    /// in the broker's database: `ZREM unacked_index` and `HDEL unacked` by delivery tag.
    func settle(
        earlyAcks: [String], documents: [CeleryResultDocument], lateAcks: [String], broker: RedisBroker
    ) async throws(CeleryWorkerError) {
        let brokerDatabase = broker.commands.url.database
        // Written on the connection's thread, where the write happens, straight in Redis's protocol.
        _ = try await client.withConnection { [self] connection throws(CeleryWorkerError) in
            var arguments = RESPArguments(capacity: 160 + 64 * (earlyAcks.count + lateAcks.count) + 320 * documents.count)
            arguments.append(broker.unackedKey)
            arguments.append(broker.unackedIndexKey)
            // By index: each document is read in place, not copied out of the array.
            for index in documents.indices { arguments.append(keyPrefix, Self.keyStem, documents[index].taskID) }
            arguments.append(brokerDatabase)
            arguments.append(client.url.database)
            arguments.append(expires ?? 0)
            arguments.append(serializer.serializerName)
            arguments.append(earlyAcks.count)
            arguments.append(documents.count)
            for tag in earlyAcks { arguments.append(tag) }
            for index in documents.indices { arguments.append { documents[index].encode(as: serializer, into: &$0) } }
            for tag in lateAcks { arguments.append(tag) }
            return try connection.evaluate(Self.settleScript, keyCount: 2 + documents.count, arguments: arguments)
        }
    }

    /// KEYS: `unacked`, `unacked_index`, then one result key per document. ARGV: broker database, backend database,
    /// expires, serializer name, the number of early tags, the number of documents; then the early tags, the
    /// documents and the late tags. The connection's database is the backend's before and after.
    static let settleScript = RedisScript(
        storeFunction + """
            local brokerdb, backenddb = ARGV[1], ARGV[2]
            local expires, decode = tonumber(ARGV[3]), decoder(ARGV[4])
            local early, count = tonumber(ARGV[5]), tonumber(ARGV[6])
            local function ack(first, last)
                if first > last then return end
                redis.call('SELECT', brokerdb)
                for i = first, last do
                    redis.call('ZREM', KEYS[2], ARGV[i])
                    redis.call('HDEL', KEYS[1], ARGV[i])
                end
                redis.call('SELECT', backenddb)
            end
            ack(7, 6 + early)
            for i = 1, count do store(KEYS[i + 2], ARGV[6 + early + i], expires, decode) end
            ack(7 + early + count, #ARGV)
            return 0
            """)
}
