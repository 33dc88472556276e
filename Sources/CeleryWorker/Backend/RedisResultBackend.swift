import CeleryProtocol

/// Celery's Redis result backend: `celery-task-meta-<id>` written with `SETEX` (or `SET` when results never expire)
/// and `PUBLISH`ed on a channel of the same name in one `MULTI`, after a `GET` that keeps a stored `SUCCESS`.
public final class RedisResultBackend: ResultBackend {
    let client: RedisClient
    /// The serializer Python readers are configured with (`result_serializer`).
    public let serializer: CeleryContentType
    /// `result_expires` in seconds; `nil` or 0 stores results without a TTL.
    public let expires: Int?
    /// Celery 5.7's `result_failure_expires`: the TTL of FAILURE documents (0: none); `nil` uses ``expires``.
    public let failureExpires: Int?
    /// `global_keyprefix`, already normalized (a `_` appended unless it ends in `:`, `_`, `-` or `.`).
    public let keyPrefix: String
    /// Celery 5.7's `result_compression`: documents, chord parts and saved groups are stored compressed behind
    /// Celery's marker (``CeleryResultDocument/compressedStored(_:with:)``); `nil`: as they are.
    public let compression: KombuCompression?
    /// `result_chord_expires`, `result_chord_join_timeout` and `result_chord_ordered`.
    public let chord: ChordOptions

    /// Celery's chord settings for the Redis backend.
    public struct ChordOptions: Sendable, Equatable {
        /// `result_chord_expires`: the TTL of a chord's counting keys and saved header, in seconds (0: none); `nil`
        /// uses `result_expires`, as Celery does.
        public var expires: Int?
        /// `result_chord_join_timeout`: how long the join waits for a header result that is not stored yet, in
        /// seconds; `nil` waits without end (Celery's `null`). Default 3, Celery's.
        public var joinTimeout: Double? = 3
        /// `result_chord_ordered` (a result backend transport option): the parts kept in a sorted set by
        /// `group_index` (default) or, when false, in a list in the order they finished. Every worker of a chord must
        /// agree, as in Celery.
        public var ordered = true

        public init(expires: Int? = nil, joinTimeout: Double? = 3, ordered: Bool = true) {
            self.expires = expires
            self.joinTimeout = joinTimeout
            self.ordered = ordered
        }
    }

    public init(
        client: RedisClient, serializer: CeleryContentType = .json, expires: Int? = 86_400, keyPrefix: String = "",
        failureExpires: Int? = nil, compression: KombuCompression? = nil, chord: ChordOptions = ChordOptions()
    ) {
        self.client = client
        self.chord = chord
        self.compression = compression
        self.serializer = serializer
        self.expires = expires
        self.failureExpires = failureExpires
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

    public func storedDocument(of taskID: String) async throws(CeleryWorkerError) -> CeleryValue? {
        guard let stored = try await client.send(RedisCommand("GET", RedisArgument(key(for: taskID)))).bytes else { return nil }
        do {
            return try CeleryResultDocument.decodeStored(stored, serializer: serializer)
        } catch {
            throw CeleryWorkerError(code: .unexpectedReply, message: "the stored result of \(taskID) does not decode: \(error.message)")
        }
    }

    /// Every document in one round trip: a script does Python's steps for each (`GET`; unless the stored state is
    /// SUCCESS, `SETEX` (or `SET`) and `PUBLISH`), atomically. A document the serializer cannot write (an integer
    /// beyond 64 bits in msgpack) is left out, the others are stored, and then the error names it (kombu's
    /// `EncodeError`).
    public func store(_ documents: [CeleryResultDocument]) async throws(CeleryWorkerError) {
        guard !documents.isEmpty else { return }
        guard documents.allSatisfy({ $0.fits(serializer) }) else {
            try await store(documents.filter { $0.fits(serializer) })
            throw unwritable(documents)
        }
        let keyPrefix = self.keyPrefix
        try await withVerdicts(for: documents) { verdicts throws(CeleryWorkerError) in
            // Encoded on the connection's thread, where the write happens, not on the caller's.
            try await client.evaluate(Self.storeScript, keyCount: documents.count) { [self] in
                var arguments = RESPArguments(capacity: 64 + 384 * documents.count)
                for document in documents { arguments.append(keyPrefix, Self.keyStem, document.taskID) }
                appendExpiry(for: documents, to: &arguments)
                arguments.append(serializerArgument(for: documents, verdicts: verdicts))
                for index in documents.indices { appendDocument(documents[index], to: &arguments) }
                return arguments
            }
        }
    }

    /// kombu's `EncodeError` for the documents of `documents` that the serializer cannot write.
    private func unwritable(_ documents: [CeleryResultDocument]) -> CeleryWorkerError {
        let left = documents.filter { !$0.fits(serializer) }.map(\.taskID)
        return CeleryWorkerError(
            code: .encodeError,
            message: "\(TraceEncodeError.integerOutOfRange): \(serializer.serializerName) cannot write the result of \(left.joined(separator: ", "))")
    }

    /// A document in the script's arguments, compressed when ``compression`` says so.
    private func appendDocument(_ document: CeleryResultDocument, to arguments: inout RESPArguments) {
        if let compression {
            // `store` and `settle` leave out what the serializer cannot write: these cannot fail.
            arguments.append(CeleryResultDocument.compressedStored((try? document.encoded(as: serializer)) ?? [], with: compression))
        } else {
            arguments.append { _ = try? document.encode(as: serializer, into: &$0) }
        }
    }

    /// Bytes as they are stored: compressed when ``compression`` says so (chord parts and saved groups).
    func storedForm(_ encoded: [UInt8]) -> [UInt8] {
        compression.map { CeleryResultDocument.compressedStored(encoded, with: $0) } ?? encoded
    }

    /// The serializer argument of the storing scripts: the serializer's name, or, with ``compression`` or
    /// `verdicts`, `<name>:<statuses>:<verdicts>`; the statuses have one byte per document, `S` for a SUCCESS, so
    /// that the script knows the batch's own compressed documents when it meets their keys again.
    private func serializerArgument(for documents: [CeleryResultDocument], verdicts: String) -> String {
        guard compression != nil || !verdicts.isEmpty else { return serializer.serializerName }
        let statuses = compression == nil ? "" : String(documents.map { $0.status == .success ? "S" : "-" })
        return "\(serializer.serializerName):\(statuses):\(verdicts)"
    }

    /// The "never overwrite SUCCESS" rule for stored values that Celery 5.7's `result_compression` compressed,
    /// which the scripts cannot decompress: `write` runs the script with what is known of such values (none at
    /// first); a script that meets one it knows nothing of writes nothing and returns the documents' places. Their
    /// values are then read and decompressed here, and the script runs again with a verdict on each: the SHA-1 of
    /// the value and whether it is a SUCCESS (a value that changed in between is decided again).
    private func withVerdicts(
        for documents: [CeleryResultDocument], _ write: (String) async throws(CeleryWorkerError) -> RedisReply
    ) async throws(CeleryWorkerError) {
        var verdicts = ""
        for _ in 0..<4 {
            guard case .array(let places) = try await write(verdicts) else { return }
            let keys = places.compactMap(\.integer).compactMap { place in
                documents.indices.contains(Int(place)) ? key(for: documents[Int(place)].taskID) : nil
            }
            guard !keys.isEmpty else { break }
            let values = try await client.send(RedisCommand("MGET", arguments: keys.map { RedisArgument($0) }))
            for case let stored? in values.array?.map(\.bytes) ?? [] where CeleryResultDocument.isCompressedStored(stored) {
                let success = CeleryResultDocument.storedStatus(stored, serializer: serializer) == .success
                verdicts += ScriptDigest.sha1Hex(stored) + (success ? "S" : "-")
            }
        }
        throw CeleryWorkerError(code: .unexpectedReply, message: "the stored results of a batch kept changing while compressed ones were read")
    }

    /// The expiry argument of the scripts that store results: `result_expires` in seconds (0: none), or, when
    /// `result_failure_expires` differs from it, `<expires>:<failure expires>:<one byte per document, F for a
    /// FAILURE>` (read by the store function's `expiries`).
    private func appendExpiry(for documents: [CeleryResultDocument], to arguments: inout RESPArguments) {
        let expires = self.expires ?? 0
        guard let failureExpires, failureExpires != expires else {
            arguments.append(expires)
            return
        }
        arguments.append("\(expires):\(failureExpires):" + String(documents.lazy.map { $0.status == .failure ? "F" : "-" }))
    }

    /// Python's steps for each document, as Lua functions shared by the scripts that store results: `GET`; unless
    /// the stored state is SUCCESS, `SETEX` (or `SET` when `expires` is 0) and `PUBLISH`. The `GET`s of a batch
    /// are one `MGET` (a key met again in the batch is read again, after the write before it). A stored value that
    /// Celery 5.7's `result_compression` compressed is decided by a verdict the worker gives (see
    /// ``withVerdicts(for:_:)``); without compressed values the scripts cost what they did before.
    static let storeFunction = """
        \(RedisScript.callMany)
        -- The expiry argument: seconds for every document, or `<expires>:<failure expires>:<flags>`, flag i F when
        -- document i is a FAILURE.
        local function expiries(argument)
            local plain = tonumber(argument)
            if plain then return plain, 0, '' end
            local expires, failure_expires, failures = string.match(argument, '^(%d+):(%d+):(.*)$')
            return tonumber(expires), tonumber(failure_expires), failures
        end
        -- The serializer argument: its name (`json` or `msgpack`), or `<name>:<statuses>:<verdicts>` when documents
        -- are compressed or stored values were: the statuses have S for each SUCCESS document of the batch, so one of
        -- its compressed documents met again under its key is known; a verdict is the SHA-1 of a compressed stored
        -- value (40 hex digits) and S (a SUCCESS) or -. Returns the decoder, the statuses and the verdicts (nil: none).
        local function serializer(argument)
            local name, statuses, verdicts = argument, '', nil
            if #argument > 7 then
                local text
                name, statuses, text = string.match(argument, '^(%a+):([S%-]*):(.*)$')
                verdicts = {}
                for at = 1, #text - 40, 41 do
                    verdicts[string.sub(text, at, at + 39)] = string.byte(text, at + 40) == 83
                end
            end
            return name == 'msgpack' and cmsgpack.unpack or cjson.decode, statuses, verdicts
        end
        -- Stores ARGV[documents + i] under KEYS[first + i] for i = 0 … count - 1, with the expiry argument `expiry`
        -- and the serializer argument `serialized`. When a stored value is compressed and has no verdict, nothing
        -- is written and the places (from 0) of such documents are returned.
        local function store_all(first, count, documents, expiry, serialized)
            local decode, statuses, verdicts = serializer(serialized)
            local last = first + count - 1
            -- One MGET reply is used as it is (its first value is the key at `first`); a batch over 1 000 keys is
            -- gathered into one table.
            local current, base = {}, first - 1
            if count <= 1000 then
                if count > 0 then current = redis.call('MGET', unpack(KEYS, first, last)) end
            else
                base = 0
                for from = first, last, 1000 do
                    local values = redis.call('MGET', unpack(KEYS, from, math.min(last, from + 999)))
                    for i = 1, #values do current[from + i - 1] = values[i] end
                end
            end
            -- Values Celery 5.7 compressed start with its marker, '\\0celery-compressed\\0', which cannot be
            -- decompressed here: without a verdict on each, nothing is written.
            local undecided = nil
            for i = first, last do
                local stored = current[i - base]
                if stored and string.byte(stored, 1) == 0 and string.sub(stored, 1, 19) == '\\0celery-compressed\\0'
                    and (verdicts == nil or verdicts[redis.sha1hex(stored)] == nil) then
                    undecided = undecided or {}
                    undecided[#undecided + 1] = i - first
                end
            end
            if undecided then return undecided end
            local expires, failure_expires, failures = expiries(expiry)
            local written = statuses ~= '' and {} or nil
            -- A key met earlier in the batch is read again, after the write before it: found by a plain search in
            -- a small batch (a table of the keys seen costs more there), by that table in a large one.
            local seen = count > 16 and {} or nil
            for i = first, last do
                local key, stored = KEYS[i], current[i - base]
                if seen then
                    if seen[key] then stored = redis.call('GET', key) end
                    seen[key] = true
                else
                    for j = first, i - 1 do
                        if KEYS[j] == key then
                            stored = redis.call('GET', key)
                            break
                        end
                    end
                end
                local success = false
                if stored then
                    if string.byte(stored, 1) == 0 and string.sub(stored, 1, 19) == '\\0celery-compressed\\0' then
                        local verdict = verdicts and verdicts[redis.sha1hex(stored)]
                        if verdict == nil and written then verdict = written[stored] end
                        success = verdict == true
                    else
                        local ok, decoded = pcall(decode, stored)
                        success = ok and type(decoded) == 'table' and decoded['status'] == 'SUCCESS'
                    end
                end
                if not success then
                    local document = ARGV[documents + i - first]
                    local ttl = expires
                    if failures ~= '' and string.byte(failures, i - first + 1) == 70 then ttl = failure_expires end
                    if ttl > 0 then
                        redis.call('SETEX', key, ttl, document)
                    else
                        redis.call('SET', key, document)
                    end
                    redis.call('PUBLISH', key, document)
                    if written then written[document] = string.byte(statuses, i - first + 1) == 83 end
                end
            end
            return nil
        end

        """

    /// KEYS: result keys; ARGV: the expiry argument, the serializer argument, one document per key. Returns 0, or
    /// the places of the documents whose stored values need a verdict (nothing was written).
    static let storeScript = RedisScript(
        storeFunction + """
            return store_all(1, #KEYS, 3, ARGV[1], ARGV[2]) or 0
            """)

    // MARK: Results and acknowledgements together

    /// Whether `broker` is on the same Redis server as this backend (whatever the databases), so that one script
    /// can write a settler batch: its acknowledgements and its results.
    func sharesServer(with broker: RedisBroker) -> Bool {
        client.url.isSameServer(as: broker.commands.url)
    }

    /// Writes a settler batch in one round trip and one atomic script, in its order: acknowledges `earlyAcks`,
    /// stores `documents` (as ``store(_:)`` does), then acknowledges `lateAcks`. An acknowledgement is kombu's,
    /// in the broker's database: `ZREM unacked_index` and `HDEL unacked` by delivery tag. A batch with a document
    /// the serializer cannot write does nothing and fails with ``CeleryWorkerError/Code/encodeError``: the caller
    /// then writes it apart, where ``store(_:)`` leaves that document out.
    func settle(
        earlyAcks: [String], documents: [CeleryResultDocument], lateAcks: [String], broker: RedisBroker
    ) async throws(CeleryWorkerError) {
        guard documents.allSatisfy({ $0.fits(serializer) }) else { throw unwritable(documents) }
        try await withVerdicts(for: documents) { verdicts throws(CeleryWorkerError) in
            // Encoded on the connection's thread, where the write happens, straight in Redis's protocol.
            try await client.evaluate(Self.settleScript, keyCount: 2 + documents.count) { [self] in
                settleArguments(earlyAcks: earlyAcks, documents: documents, lateAcks: lateAcks, broker: broker, verdicts: verdicts)
            }
        }
    }

    /// The settle script's keys and other arguments (see ``settleScript``).
    private func settleArguments(
        earlyAcks: [String], documents: [CeleryResultDocument], lateAcks: [String], broker: RedisBroker, verdicts: String
    ) -> RESPArguments {
        var arguments = RESPArguments(capacity: 160 + 64 * (earlyAcks.count + lateAcks.count) + 320 * documents.count)
        arguments.append(broker.unackedKey)
        arguments.append(broker.unackedIndexKey)
        // By index: each document is read in place, not copied out of the array.
        for index in documents.indices { arguments.append(keyPrefix, Self.keyStem, documents[index].taskID) }
        arguments.append(broker.commands.url.database)
        arguments.append(client.url.database)
        appendExpiry(for: documents, to: &arguments)
        arguments.append(serializerArgument(for: documents, verdicts: verdicts))
        arguments.append(earlyAcks.count)
        arguments.append(documents.count)
        for tag in earlyAcks { arguments.append(tag) }
        for index in documents.indices { appendDocument(documents[index], to: &arguments) }
        for tag in lateAcks { arguments.append(tag) }
        return arguments
    }

    /// KEYS: `unacked`, `unacked_index`, then one result key per document. ARGV: broker database, backend database,
    /// the expiry argument, the serializer argument, the number of early tags, the number of documents; then the
    /// early tags, the documents and the late tags. The connection's database is the backend's before and after.
    /// Returns 0, or (having done nothing) the places of the documents whose stored values need a verdict.
    static let settleScript = RedisScript(
        storeFunction + """
            local brokerdb, backenddb = ARGV[1], ARGV[2]
            local expiry = ARGV[3]
            local early, count = tonumber(ARGV[5]), tonumber(ARGV[6])
            -- With both in one database (Celery's examples use database 0 for both), no SELECT at all.
            local across = brokerdb ~= backenddb
            local function ack(first, last)
                if first > last then return end
                if across then redis.call('SELECT', brokerdb) end
                call_many('ZREM', KEYS[2], ARGV, first, last)
                call_many('HDEL', KEYS[1], ARGV, first, last)
                if across then redis.call('SELECT', backenddb) end
            end
            ack(7, 6 + early)
            -- Results that wait for a verdict write nothing, and their acks-late acknowledgements wait with them (the
            -- early ones are done, as Celery acknowledges them before the task runs; done again, they change nothing).
            local undecided = store_all(3, count, 7 + early, expiry, ARGV[4])
            if undecided then return undecided end
            ack(7 + early + count, #ARGV)
            return 0
            """)
}
