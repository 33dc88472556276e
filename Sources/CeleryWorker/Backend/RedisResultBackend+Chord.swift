import CeleryProtocol
import Foundation
import Logging

/// Chords on the Redis backend, with the keys and atomic steps of Celery 5.7's `RedisBackend`:
/// `celery-taskset-meta-<group>.j` (a sorted set of `[1, id, state, result]` scored by `group_index`), `.t` (size
/// adjustments), `.s` (the size), `.d` (parts already counted) and `.c` (the claim to send the body). Celery 5.3
/// workers count parts on the same `.j` and `.s` keys, so a chord's header can be split across Swift workers and
/// Python workers of either version and its body still runs once.
extension RedisResultBackend {
    /// `celery-taskset-meta-<group>` plus a suffix.
    public func groupKey(_ groupID: String, _ suffix: String = "") -> String {
        keyPrefix + "celery-taskset-meta-" + groupID + suffix
    }

    /// Celery 5.7's `CHORD_PART_RETURN_LUA`, with one addition: a claim already held under this call's token counts
    /// as taken, so a call whose reply was lost (Redis restarted) can be made again and still send the body. Python
    /// workers counting parts of the same chord run Celery's script on the same keys; the two agree on every key.
    static let chordPartReturnScript = RedisScript(
        """
        local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
        local tid, value, ordered, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
        local expires, group_expires = tonumber(ARGV[5]), tonumber(ARGV[6])
        local claim_expires = tonumber(ARGV[7])
        local claim_token = ARGV[8]
        local done_marker = redis.call('GET', ckey)
        if done_marker == 'done' then
            return {-1, 0, 0, 0}
        end
        local member = tid .. ':' .. score
        if redis.call('SISMEMBER', dkey, member) == 0 then
            if ordered == '1' then
                redis.call('ZADD', jkey, score, value)
            else
                redis.call('RPUSH', jkey, value)
            end
            redis.call('SADD', dkey, member)
        end
        local readycount
        if ordered == '1' then
            readycount = redis.call('ZCOUNT', jkey, '-inf', '+inf')
        else
            readycount = redis.call('LLEN', jkey)
        end
        if expires > 0 then
            for _, key in ipairs({jkey, tkey, skey, dkey}) do
                redis.call('EXPIRE', key, expires)
            end
            if group_expires > 0 then
                redis.call('EXPIRE', gkey, group_expires)
            end
        end
        local totaldiff = redis.call('GET', tkey)
        local size = redis.call('GET', skey)
        local claimed = 0
        if size and readycount == tonumber(size) + tonumber(totaldiff or 0) then
            if redis.call('SET', ckey, claim_token, 'NX', 'EX', claim_expires) then
                claimed = 1
            elseif redis.call('GET', ckey) == claim_token then
                claimed = 1
            end
        end
        return {readycount, totaldiff, size, claimed}
        """)

    /// Celery 5.7's `CHORD_CLEANUP_LUA`, unchanged.
    static let chordCleanupScript = RedisScript(
        """
        local ckey = KEYS[1]
        local jkey = KEYS[2]
        local tkey = KEYS[3]
        local skey = KEYS[4]
        local dkey = KEYS[5]
        local token = ARGV[1]
        local done_expires = tonumber(ARGV[2])
        if redis.call('GET', ckey) == token then
            redis.call('DEL', jkey, tkey, skey, dkey)
            if done_expires and done_expires > 0 then
                redis.call('SET', ckey, 'done', 'EX', done_expires)
            end
            return 1
        end
        return 0
        """)

    /// Celery 5.7's `CHORD_CLAIM_EXTEND_LUA`, unchanged: the claim extended while this worker holds it, or taken
    /// again when it expired while the chord's state is still there.
    static let chordClaimExtendScript = RedisScript(
        """
        local ckey, skey = KEYS[1], KEYS[2]
        local token = ARGV[1]
        local expires = tonumber(ARGV[2])
        if redis.call('GET', ckey) == token then
            return redis.call('EXPIRE', ckey, expires)
        end
        if not redis.call('GET', ckey) and redis.call('EXISTS', skey) == 1 then
            return redis.call('SET', ckey, token, 'EX', expires, 'NX') and 1 or 0
        end
        return 0
        """)

    /// Celery's claim lifetime: twice `result_chord_join_timeout` (5 s when it is null), at least 5 s.
    var claimExpires: Int { max(5, Int((chord.joinTimeout ?? 5) * 2)) }
    /// How long the `done` marker keeps late duplicates out: twice the claim, at least 300 s.
    var doneExpires: Int { max(claimExpires * 2, 300) }
    /// The claim's lifetime while the body is sent, as Celery estimates it with its default publish retry policy
    /// (3 retries, 0.2 s apart) and `broker_connection_timeout` (4 s): 21 s, or the claim's when that is longer.
    var publishClaimExpires: Int { max(claimExpires, 21) }
    /// `result_chord_expires`, else `result_expires` (0: none): the TTL of the counting keys and the saved header.
    var chordExpires: Int { chord.expires ?? expires ?? 0 }
    /// Celery's `_chord_result_expires`: the group key never expires sooner than results do.
    var chordResultExpires: Int {
        let results = expires ?? 0
        return chordExpires == 0 || results == 0 ? 0 : max(chordExpires, results)
    }

    public func chordPartReturn(
        groupID: String, taskID: String, groupIndex: Int?, state: TaskState, result: CeleryValue, token: String
    ) async throws(CeleryWorkerError) -> ChordCompletion? {
        let entry = storedForm(
            try CeleryWorkerError.encoding { () throws(CeleryProtocolError) in
                try serializer.encode([1, .string(taskID), .string(state.rawValue), result])
            })
        let reply = try await client.evaluate(
            Self.chordPartReturnScript,
            keys: [".j", ".t", ".s", ".d", "", ".c"].map { RedisArgument(groupKey(groupID, $0)) },
            arguments: [
                RedisArgument(taskID), RedisArgument(entry), chord.ordered ? "1" : "0",
                RedisArgument(groupIndex.map(String.init) ?? "+inf"), RedisArgument(chordExpires), RedisArgument(chordResultExpires),
                RedisArgument(claimExpires), RedisArgument(token),
            ])
        guard let fields = reply.array, fields.count == 4, let ready = fields[0].integer, ready >= 0 else { return nil }
        if fields[3].integer != 1 {
            // Every part is counted, but another worker holds the claim to send the body.
            guard let size = fields[2].text.flatMap({ Int($0) }), ready == size + (fields[1].text.flatMap { Int($0) } ?? 0),
                try await outlastChordClaim(groupID: groupID, token: token)
            else { return nil }
        }
        let stored = try await client.send(
            RedisCommand(chord.ordered ? "ZRANGE" : "LRANGE", RedisArgument(groupKey(groupID, ".j")), "0", "-1"))
        var parts: [ChordCompletion.Part] = []
        for member in stored.array ?? [] {
            guard let bytes = member.bytes,
                case .array(let tuple)? = try? CeleryResultDocument.decodeStored(bytes, serializer: serializer), tuple.count == 4,
                let id = tuple[1].stringValue, let state = tuple[2].stringValue
            else {
                throw CeleryWorkerError(code: .unexpectedReply, message: "a chord result in \(groupKey(groupID, ".j")) cannot be decoded")
            }
            parts.append(ChordCompletion.Part(taskID: id, state: TaskState(state), result: tuple[3]))
        }
        var completion = ChordCompletion(parts: parts, token: token)
        completion.savedHeader = try await savedGroup(groupID)
        completion.storedResults = try await readyResults(of: completion.missingTaskIDs())
        return completion
    }

    static let logger = Logger(label: "celery.backends.redis")

    /// A chord whose parts are all counted while another worker holds the claim to send its body: waits until that
    /// worker is done (the claim turns `done`: `false`) or its claim expires with the chord's state still there, and
    /// then takes the claim (`true`). Celery 5.7 gives up at once, so the body of a chord whose worker died holding
    /// the claim is sent only if a part comes back after the claim expired: with a visibility timeout shorter than
    /// the claim (6 s, 21 s while the body is sent), never. Bounded by the longest claim and a few seconds.
    func outlastChordClaim(groupID: String, token: String) async throws(CeleryWorkerError) -> Bool {
        let claimKey = RedisArgument(groupKey(groupID, ".c"))
        let started = ContinuousClock.now
        let deadline = started + .seconds(publishClaimExpires + 5)
        var warned = false
        while ContinuousClock.now < deadline {
            let replies = try await client.pipeline([RedisCommand("GET", claimKey), RedisCommand("PTTL", claimKey)])
            switch replies.first?.text {
            case "done":
                return false
            case nil:
                if try await extendChordClaim(groupID: groupID, token: token) {
                    Self.logger.warning("Chord '\(groupID)': the claim to send its body expired unused; this worker sends it")
                    return true
                }
                // Taken by another worker just now, or the chord is gone (failed, or finished without a marker).
                let size = try await client.send(RedisCommand("EXISTS", RedisArgument(groupKey(groupID, ".s"))))
                if size.integer != 1 { return false }
            default:
                // A worker alive and sending the body is done within milliseconds: only a longer wait is told.
                if !warned, ContinuousClock.now - started > .seconds(1) {
                    Self.logger.warning(
                        "Chord '\(groupID)': another worker holds the claim to send its body; waiting until it is sent or the claim expires")
                    warned = true
                }
            }
            // A claim without an expiry (PTTL -1: not Celery's) is looked at once a second.
            let remaining = replies.count == 2 ? replies[1].integer ?? 1000 : 1000
            try? await Task.sleep(for: .milliseconds(remaining < 0 ? 1000 : min(max(remaining, 20), 1000)))
        }
        Self.logger.error(
            "Chord '\(groupID)': the claim to send its body is still held after \(publishClaimExpires + 5) s; this worker does not send it")
        return false
    }

    /// The `GroupResult` tuple Celery saved under `celery-taskset-meta-<group>` (`{"result": as_tuple()}`), or
    /// `nil` when nothing (or something else) is stored there.
    func savedGroup(_ groupID: String) async throws(CeleryWorkerError) -> CeleryValue? {
        guard let bytes = try await client.send(RedisCommand("GET", RedisArgument(groupKey(groupID)))).bytes,
            let document = try? CeleryResultDocument.decodeStored(bytes, serializer: serializer)
        else { return nil }
        return document["result"]
    }

    /// The stored results of these tasks, once each is ready; a result still missing or not ready after
    /// `result_chord_join_timeout` is left out (the join then fails as Python's does on its timeout).
    func readyResults(of taskIDs: [String]) async throws(CeleryWorkerError) -> [ChordCompletion.Part] {
        var ready: [ChordCompletion.Part] = []
        var waiting = taskIDs
        let deadline = chord.joinTimeout.map { ContinuousClock.now + .milliseconds(Int64($0 * 1000)) }
        while !waiting.isEmpty {
            let reply = try await client.send(RedisCommand("MGET", arguments: waiting.map { RedisArgument(key(for: $0)) }))
            var stillWaiting: [String] = []
            for (id, stored) in zip(waiting, reply.array ?? []) {
                guard let bytes = stored.bytes, let document = try? CeleryResultDocument.decodeStored(bytes, serializer: serializer),
                    let status = document["status"]?.stringValue, TaskState(status).isReady
                else {
                    stillWaiting.append(id)
                    continue
                }
                ready.append(ChordCompletion.Part(taskID: id, state: TaskState(status), result: document["result"] ?? .null))
            }
            waiting = stillWaiting
            guard !waiting.isEmpty, deadline.map({ ContinuousClock.now < $0 }) ?? true else { break }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return ready
    }

    public func chordFinished(groupID: String, token: String) async throws(CeleryWorkerError) {
        _ = try await client.evaluate(
            Self.chordCleanupScript,
            keys: [".c", ".j", ".t", ".s", ".d"].map { RedisArgument(groupKey(groupID, $0)) },
            arguments: [RedisArgument(token), RedisArgument(doneExpires)])
    }

    public func extendChordClaim(groupID: String, token: String) async throws(CeleryWorkerError) -> Bool {
        let reply = try await client.evaluate(
            Self.chordClaimExtendScript, keys: [".c", ".s"].map { RedisArgument(groupKey(groupID, $0)) },
            arguments: [RedisArgument(token), RedisArgument(publishClaimExpires)])
        return reply.integer == 1
    }

    public func chordFailed(groupID: String) async throws(CeleryWorkerError) {
        try await client.send(RedisCommand("DEL", RedisArgument(groupKey(groupID, ".s"))))
    }

    public func setChordSize(groupID: String, size: Int) async throws(CeleryWorkerError) {
        try await client.send(RedisCommand("DEL", RedisArgument(groupKey(groupID, ".c"))))
        try await client.send(
            RedisCommand("SET", arguments: [RedisArgument(groupKey(groupID, ".s")), RedisArgument(size)] + chordKeyExpiry))
    }

    public func saveGroup(groupID: String, result: CeleryValue) async throws(CeleryWorkerError) {
        let document = storedForm(try CeleryWorkerError.encoding { () throws(CeleryProtocolError) in try serializer.encode(["result": result]) })
        try await client.send(RedisCommand("SET", arguments: [RedisArgument(groupKey(groupID)), RedisArgument(document)] + chordKeyExpiry))
    }

    public func addToChord(groupID: String) async throws(CeleryWorkerError) {
        try await client.send(RedisCommand("INCR", RedisArgument(groupKey(groupID, ".t"))))
    }

    /// Python's `_set_chord_key`: `EX result_expires`, or no expiry when results never expire.
    /// Celery's `_set_chord_key`: `result_chord_expires` (else `result_expires`), none when 0.
    private var chordKeyExpiry: [RedisArgument] {
        chordExpires > 0 ? ["EX", RedisArgument(chordExpires)] : []
    }
}
