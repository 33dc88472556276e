import CeleryProtocol
import Foundation

/// Keeps a schedule to one embedded beat: several workers started with `-B` against one broker (replicas of one
/// deployment, say) would each send every periodic task, as two Python beats do. The beat that holds the key
/// `<name>.lock` in the broker's database sends; the others stand by and take over within ``lifetime`` of the
/// holder's end (at once after its warm shutdown, which gives the key up). The holder renews the key every
/// ``renewal`` seconds, and keeps each entry's last run in the hash `<name>.runs` as well as in its schedule file, so
/// the beat that takes over goes on from there.
struct BeatLock: Sendable {
    let client: RedisClient
    /// `<name>.lock` (`swift_beat_lock` names it, behind the broker's `global_keyprefix`).
    let key: String
    /// `<name>.runs`: each entry's last run, as the holder last sent it.
    let runsKey: String
    /// What the holder writes: its node name and pid, for the others' log, and a random part of its own.
    let token: String

    /// How long the key outlives a holder that stopped renewing it.
    static let lifetime = 10.0
    /// How often the holder renews the key, and a standing-by beat tries to take it.
    static let renewal = 3.0

    init(client: RedisClient, name: String, node: String) {
        self.client = client
        self.key = name + ".lock"
        self.runsKey = name + ".runs"
        self.token = "\(node) (pid \(Host.pid)) \(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Takes the key when it is free or already this beat's (renewing it); else returns who holds it.
    static let acquireScript = RedisScript(
        """
        local holder = redis.call('GET', KEYS[1])
        if holder == false or holder == ARGV[1] then
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            return false
        end
        return holder
        """)

    /// Gives the key up if this beat holds it.
    static let releaseScript = RedisScript(
        """
        if redis.call('GET', KEYS[1]) == ARGV[1] then
            redis.call('DEL', KEYS[1])
        end
        return false
        """)

    /// `nil` when this beat holds the key now; else the holder's description (its node name and pid).
    func acquire() async throws(CeleryWorkerError) -> String? {
        let reply = try await client.evaluate(
            Self.acquireScript, keys: [RedisArgument(key)],
            arguments: [RedisArgument(token), RedisArgument(Int(Self.lifetime * 1000))]
        ).check("beat lock \(key)")
        guard let holder = reply.text else { return nil }
        // The holder's node and pid, without its random part.
        return holder.split(separator: " ").dropLast().joined(separator: " ")
    }

    /// The last runs the holders kept; entries it cannot read are left out.
    func runs() async throws(CeleryWorkerError) -> [String: BeatScheduler.Run] {
        let reply = try await client.send(RedisCommand("HGETALL", RedisArgument(runsKey))).check("beat runs \(runsKey)")
        var runs: [String: BeatScheduler.Run] = [:]
        let fields = reply.array ?? []
        for index in stride(from: 0, to: fields.count - 1, by: 2) {
            guard let name = fields[index].text, let bytes = fields[index + 1].bytes,
                case .object(let run)? = try? CeleryJSON.decode(bytes), let lastRunAt = run["last_run_at"]?.doubleValue
            else { continue }
            runs[name] = BeatScheduler.Run(lastRunAt: lastRunAt, totalRunCount: run["total_run_count"]?.intValue ?? 0)
        }
        return runs
    }

    /// Records the runs of the entries just sent.
    func record(_ runs: [String: BeatScheduler.Run]) async {
        guard !runs.isEmpty else { return }
        var arguments = [RedisArgument(runsKey)]
        for (name, run) in runs.sorted(by: { $0.key < $1.key }) {
            arguments.append(RedisArgument(name))
            arguments.append(
                RedisArgument(
                    CeleryJSON.encode(["last_run_at": .double(run.lastRunAt), "total_run_count": .int(Int64(run.totalRunCount))])))
        }
        _ = try? await client.send(RedisCommand("HSET", arguments: arguments))
    }

    func release() async {
        _ = try? await client.evaluate(Self.releaseScript, keys: [RedisArgument(key)], arguments: [RedisArgument(token)])
    }
}
