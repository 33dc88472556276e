import CeleryProtocol
import Foundation

/// RedBeat's keys in Redis (see ``RedBeatConfiguration``): what a RedBeat beat reads and writes, with the same
/// commands.
struct RedBeatStore: Sendable {
    let client: RedisClient
    let configuration: RedBeatConfiguration
    let zone: CeleryTimeZone

    /// What a key of the schedule holds.
    enum Loaded {
        case entry(RedBeatCodec.Stored)
        /// The hash has no `definition` (the entry was deleted): RedBeat drops the key from the schedule.
        case missing
        /// A definition the Swift beat cannot read (RedBeat's `rrule`, say): left as it is for a Python beat.
        case unreadable(CeleryWorkerError)
    }

    /// RedBeat's `setup_schedule`: deletes the entries an earlier start stored from `beat_schedule` that it no
    /// longer names, then stores each of `entries`, keeping the last run of one stored before (a new one counts
    /// from `now`, as Celery's `ScheduleEntry` does), and records their names as the static ones. Returns the names
    /// deleted.
    func setUp(_ entries: [BeatEntry], now: Double) async throws(CeleryWorkerError) -> [String] {
        let statics = try await client.send(RedisCommand("SMEMBERS", RedisArgument(configuration.staticsKey))).check("SMEMBERS")
        let names = Set(entries.map(\.name))
        let removed = (statics.array ?? []).compactMap(\.text).filter { !names.contains($0) }.sorted()
        for name in removed {
            _ = try await client.pipeline([
                RedisCommand("ZREM", RedisArgument(configuration.scheduleKey), RedisArgument(configuration.key(of: name))),
                RedisCommand("DEL", RedisArgument(configuration.key(of: name))),
                RedisCommand("SREM", RedisArgument(configuration.staticsKey), RedisArgument(name)),
            ])
        }
        for entry in entries {
            let key = configuration.key(of: entry.name)
            let stored = try await client.pipeline([
                RedisCommand("HGET", RedisArgument(key), "definition"), RedisCommand("HGET", RedisArgument(key), "meta"),
            ])
            var lastRunAt: Double? = now
            if stored.first?.bytes != nil {
                // RedBeat keeps the stored entry's last run, none if its meta has none.
                lastRunAt = stored.count > 1 ? RedBeatCodec.lastRun(meta: stored[1].bytes).lastRunAt : nil
            }
            let definition = try RedBeatCodec.definition(of: entry)
            let score = RedBeatCodec.score(entry.schedule, lastRunAt: lastRunAt, now: WallClock.now(), zone: zone)
            for reply in try await client.pipeline([
                RedisCommand("HSET", RedisArgument(key), "definition", RedisArgument(definition)),
                RedisCommand(
                    "HSETNX", RedisArgument(key), "meta", RedisArgument(RedBeatCodec.meta(lastRunAt: lastRunAt, totalRunCount: nil, zone: zone))),
                RedisCommand("ZADD", RedisArgument(configuration.scheduleKey), RedisArgument(Int(score)), RedisArgument(key)),
            ]) {
                _ = try reply.check("storing \(key)")
            }
        }
        if !entries.isEmpty {
            _ = try await client.send(
                RedisCommand("SADD", arguments: [RedisArgument(configuration.staticsKey)] + entries.map { RedisArgument($0.name) })
            ).check("SADD")
        }
        return removed
    }

    /// RedBeat's `schedule`: the keys due at `now` (whole seconds), and the first one due within `maxInterval` after.
    func selected(now: Double, maxInterval: Double) async throws(CeleryWorkerError) -> [String] {
        let due = Int(now.rounded(.down))
        let replies = try await client.pipeline([
            RedisCommand("ZRANGEBYSCORE", RedisArgument(configuration.scheduleKey), 0, RedisArgument(due)),
            RedisCommand(
                "ZRANGEBYSCORE", RedisArgument(configuration.scheduleKey), RedisArgument("(\(due)"),
                RedisArgument(Double(due) + maxInterval), "LIMIT", 0, 1),
        ])
        var keys: [String] = []
        for reply in replies { keys += try (reply.check("ZRANGEBYSCORE").array ?? []).compactMap(\.text) }
        return keys
    }

    /// Each key's entry, as RedBeat's `from_key` reads it.
    func load(_ keys: [String]) async throws(CeleryWorkerError) -> [(key: String, loaded: Loaded)] {
        guard !keys.isEmpty else { return [] }
        var commands: [RedisCommand] = []
        for key in keys {
            commands.append(RedisCommand("HGET", RedisArgument(key), "definition"))
            commands.append(RedisCommand("HGET", RedisArgument(key), "meta"))
        }
        let replies = try await client.pipeline(commands)
        guard replies.count == 2 * keys.count else { throw RedBeatCodec.failure("RedBeat's schedule: short reply") }
        return keys.enumerated().map { index, key in
            guard let definition = replies[2 * index].bytes else { return (key, .missing) }
            do throws(CeleryWorkerError) {
                return (key, .entry(try RedBeatCodec.stored(definition: definition, meta: replies[2 * index + 1].bytes)))
            } catch {
                return (key, .unreadable(error))
            }
        }
    }

    /// Drops a key from the schedule (its entry is gone).
    func remove(_ key: String) async throws(CeleryWorkerError) {
        _ = try await client.send(RedisCommand("ZREM", RedisArgument(configuration.scheduleKey), RedisArgument(key))).check("ZREM")
    }

    /// RedBeat's `reserve`: records a run at `now` (the run count one more) and scores the entry by its next run.
    func reserve(_ stored: RedBeatCodec.Stored, now: Double) async throws(CeleryWorkerError) {
        let key = configuration.key(of: stored.entry.name)
        let meta = RedBeatCodec.meta(lastRunAt: now, totalRunCount: stored.totalRunCount + 1, zone: zone)
        let score = RedBeatCodec.score(stored.entry.schedule, lastRunAt: now, now: WallClock.now(), zone: zone)
        for reply in try await client.pipeline([
            RedisCommand("HSET", RedisArgument(key), "meta", RedisArgument(meta)),
            RedisCommand("ZADD", RedisArgument(configuration.scheduleKey), RedisArgument(Int(score)), RedisArgument(key)),
        ]) {
            _ = try reply.check("recording the run of \(key)")
        }
    }
}

/// redis-py's lock as RedBeat holds it: `SET <key> <token> NX PX`, renewed to the full timeout at every tick (RedBeat's
/// own extend script), deleted at shutdown if still this beat's.
struct RedBeatLock: Sendable {
    let client: RedisClient
    let key: String
    /// As redis-py's: a fresh `uuid1().hex`-like token.
    let token = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()

    /// RedBeat's `LUA_EXTEND_TO_SCRIPT`.
    static let extendScript = RedisScript(
        """
        local token = redis.call('get', KEYS[1])
        if not token or token ~= ARGV[1] then
            return 0
        end
        local expiration = redis.call('pttl', KEYS[1])
        if not expiration then
            expiration = 0
        end
        if expiration < 0 then
            return 0
        end
        redis.call('pexpire', KEYS[1], ARGV[2])
        return 1
        """)

    static func milliseconds(_ seconds: Double) -> Int { max(Int((seconds * 1000).rounded(.down)), 1) }

    /// Takes the lock if it is free.
    func acquire(timeout: Double) async throws(CeleryWorkerError) -> Bool {
        let reply = try await client.send(
            RedisCommand("SET", RedisArgument(key), RedisArgument(token), "NX", "PX", RedisArgument(Self.milliseconds(timeout)))
        ).check("SET \(key)")
        return reply.text == "OK"
    }

    /// Renews the lock to `timeout`; `false` when it is no longer this beat's.
    func extend(timeout: Double) async throws(CeleryWorkerError) -> Bool {
        let reply = try await client.evaluate(
            Self.extendScript, keys: [RedisArgument(key)], arguments: [RedisArgument(token), RedisArgument(Self.milliseconds(timeout))]
        ).check("extending \(key)")
        return reply.integer == 1
    }

    func release() async {
        _ = try? await client.evaluate(RedisBroker.releaseScript, keys: [RedisArgument(key)], arguments: [RedisArgument(token)])
    }
}
