import CeleryProtocol
import Foundation
import Logging

/// What Celery's gossip (the worker's `Gossip` bootstep) knows of the other workers, from the `worker-*` events it
/// hears: which are alive (a heartbeat within twice its `freq`), and the elections this worker takes part in. Pure:
/// the worker's gossip loop feeds it events and the time, and logs and sends what it returns.
struct GossipState: Sendable {
    /// Another worker, as Celery's `events.State` keeps it for gossip.
    struct Peer: Sendable, Equatable {
        var frequency: Double
        /// When its last heartbeat (or `worker-online`) was received here; `nil` before one with a timestamp.
        var lastHeard: Double?

        /// Celery's `Worker.alive`: a heartbeat heard less than twice its frequency ago.
        func isAlive(now: Double) -> Bool {
            guard let lastHeard else { return false }
            return now < lastHeard + frequency * Double(GossipState.expireWindow) / 100
        }
    }

    /// A node's bid in an election: Celery's `(clock, "hostname.pid", topic, action)`.
    struct Bid: Sendable, Equatable {
        var clock: Int
        var process: String
        var topic: String
        var action: CeleryValue
    }

    /// What an election came to, once every alive worker acknowledged it.
    enum Election: Sendable, Equatable {
        /// This worker won: it carries out the action (a `task` topic: the signature is sent).
        case won(id: String, topic: String, action: CeleryValue)
        /// Another node won.
        case lost(id: String, leader: String)
    }

    /// Celery's `HEARTBEAT_EXPIRE_WINDOW` (percent of `freq`) and `HEARTBEAT_DRIFT_MAX` (seconds).
    static let expireWindow = 200
    static let driftMax = 16
    /// Celery's gossip interval: how often lost workers are looked for.
    static let interval: Double = 5

    private(set) var peers: [String: Peer] = [:]
    /// Nodes whose clock drift was already logged (Celery logs it once per node).
    private var drifted: Set<String> = []
    /// Bids heard, by election id; and the acknowledgements of the elections this worker holds.
    private(set) var bids: [String: [Bid]] = [:]
    private(set) var acknowledgements: [String: [String]] = [:]

    /// A `worker-online`, `worker-heartbeat` or `worker-offline` event of another worker (`subject` is what follows
    /// `worker-`), received `now`; returns the lines Celery logs for it (joined and left at debug, a clock drift of
    /// more than 16 s as a warning, once per node).
    mutating func heard(_ subject: String, from hostname: String, fields: CeleryObject, now: Double) -> [(Logger.Level, String)] {
        if subject == "offline" {
            peers[hostname] = nil
            return [(.debug, "\(hostname) left")]
        }
        var lines: [(Logger.Level, String)] = []
        let created = peers[hostname] == nil
        var peer = peers[hostname] ?? Peer(frequency: 60)
        if let frequency = fields["freq"]?.doubleValue { peer.frequency = frequency }
        if let timestamp = fields["timestamp"]?.doubleValue, timestamp != 0 {
            let drift = abs(Int(now) - Int(timestamp))
            if drift > Self.driftMax, drifted.insert(hostname).inserted {
                lines.append(
                    (
                        .warning,
                        "Substantial drift from \(hostname) may mean clocks are out of sync.  Current drift is \(drift) seconds.  "
                            + "[orig: \(Self.pythonDate(now)) recv: \(Self.pythonDate(timestamp))]"
                    ))
            }
            peer.lastHeard = max(peer.lastHeard ?? now, now)
        }
        peers[hostname] = peer
        if created || subject == "online" { lines.append((.debug, "\(hostname) joined the party")) }
        return lines
    }

    /// Celery's periodic check: the workers no longer alive, forgotten (Celery logs `missed heartbeat from …`).
    mutating func sweep(now: Double) -> [String] {
        let lost = peers.filter { !$0.value.isAlive(now: now) }.keys.sorted()
        for hostname in lost { peers[hostname] = nil }
        return lost
    }

    func aliveCount(now: Double) -> Int {
        peers.values.filter { $0.isAlive(now: now) }.count
    }

    /// This worker holds an election (the `election` remote control command): it will count acknowledgements.
    mutating func hold(_ id: String) {
        acknowledgements[id] = []
    }

    /// A `worker-elect` event (any node's, this worker's too): its bid is kept. The caller acknowledges it.
    mutating func bid(_ id: String, _ bid: Bid) {
        bids[id, default: []].append(bid)
    }

    /// A `worker-elect-ack` event: for an election this worker holds, once as many nodes acknowledged as there are
    /// alive workers, the lowest clock wins (ties: the lower `hostname.pid`), as Celery's `LamportClock.sort_heap`
    /// picks it. `process` is this worker's `hostname.pid`.
    mutating func acknowledged(_ id: String, by hostname: String, now: Double, process: String) -> Election? {
        guard var replies = acknowledgements[id] else { return nil }
        replies.append(hostname)
        acknowledgements[id] = replies
        guard replies.count >= aliveCount(now: now) else { return nil }
        let leader = (bids[id] ?? []).min { ($0.clock, $0.process) < ($1.clock, $1.process) }
        bids[id] = nil
        acknowledgements[id] = nil
        guard let leader else { return nil }
        return leader.process == process ? .won(id: id, topic: leader.topic, action: leader.action) : .lost(id: id, leader: leader.process)
    }

    /// Python's `str(datetime.fromtimestamp(t))`, in local time: `2026-12-05 18:05:01.172000`.
    static func pythonDate(_ seconds: Double) -> String {
        var whole = time_t(seconds.rounded(.down))
        var parts = tm()
        localtime_r(&whole, &parts)
        let micros = Int(((seconds - seconds.rounded(.down)) * 1_000_000).rounded())
        let date = String(
            format: "%04d-%02d-%02d %02d:%02d:%02d", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min,
            parts.tm_sec)
        return micros == 0 ? date : date + String(format: ".%06d", min(micros, 999_999))
    }
}

extension WorkerRun {
    /// Whether this worker gossips (Celery's gossip, off with `--without-gossip`): it listens to the other workers'
    /// `worker.*` events on its pub/sub connection (``subscriptionLoop()``), keeps its clock past theirs, logs
    /// `missed heartbeat from …` (INFO) when one stops sending heartbeats, and takes part in elections (the
    /// `election` remote control command).
    var gossips: Bool { configuration.gossip && service.events != nil }

    /// The channel patterns of the workers' events: `worker.*` on the event exchange (and, with Sentinel, the topic
    /// kombu before 5.4 uses there).
    var gossipChannels: [String] {
        let transport = configuration.brokerTransport
        let prefix = configuration.brokerKeyPrefix
        let legacy =
            configuration.brokerURL.isSentinel
            ? transport.legacySentinelChannel(exchange: configuration.eventExchange, routingKey: "worker.*", prefix: prefix) : nil
        return [
            transport.fanoutChannel(
                exchange: configuration.eventExchange, routingKey: "worker.*", database: configuration.brokerURL.database, prefix: prefix)
        ] + (legacy.map { [$0] } ?? [])
    }

    /// Celery's gossip timer: every 5 s, the workers heard before that are no longer alive are logged and forgotten.
    func gossipSweepLoop() async {
        while await shutdown.sleep(untilUnixTime: WallClock.now() + GossipState.interval) {
            for hostname in gossip.withLock({ $0.sweep(now: WallClock.now()) }) {
                logger.info("missed heartbeat from \(hostname)")
            }
        }
    }

    /// This worker's process id in elections: Celery's `hostname.pid`.
    var gossipProcess: String { "\(configuration.nodeName).\(Host.pid)" }

    /// One message on the workers' event channel, as Celery's `Gossip.on_message` takes it.
    func heardGossip(_ raw: [UInt8]) async {
        guard let envelope = try? KombuEnvelope(decoding: raw) else {
            logger.error("Gossip: an event that cannot be decoded: \(Self.preview(raw))")
            return
        }
        let routingKey = envelope.deliveryInfo.routingKey
        // With fanout_patterns off every event arrives here; task events (batched in lists) are not gossip.
        if routingKey.split(separator: ".").first == "task" { return }
        // Celery's event receivers accept JSON and `event_serializer`, which may be `auth`.
        guard case .object(let event)? = openedBody(envelope, signedOnly: false)?.body else {
            logger.error("Gossip: an event that cannot be decoded: \(Self.preview(raw))")
            return
        }
        switch routingKey {
        case "worker.elect":
            await heardElection(event)
        case "worker.elect.ack":
            guard let id = event["id"]?.stringValue, let hostname = event["hostname"]?.stringValue else { return }
            let now = WallClock.now()
            let process = gossipProcess
            switch gossip.withLock({ $0.acknowledged(id, by: hostname, now: now, process: process) }) {
            case .won(let id, let topic, let action)?:
                logger.info("I won the election \(PythonRepr.repr(.string(id)))")
                guard topic == "task" else {
                    logger.error("Unknown election topic \(PythonRepr.repr(.string(topic)))")
                    return
                }
                await callElectedTask(action)
            case .lost(let id, let leader)?:
                logger.info("node \(leader) elected for \(PythonRepr.repr(.string(id)))")
            case nil:
                break
            }
        default:
            let hostname = envelope.headers["hostname"]?.stringValue ?? event["hostname"]?.stringValue
            guard let hostname, hostname != configuration.nodeName else {
                service.events?.forwardClock()
                return
            }
            if let clock = event["clock"]?.intValue { service.events?.adjustClock(to: clock) }
            guard let type = event["type"]?.stringValue, type.hasPrefix("worker-") else { return }
            let now = WallClock.now()
            for (level, line) in gossip.withLock({ $0.heard(String(type.dropFirst(7)), from: hostname, fields: event, now: now) }) {
                logger.log(level: level, "\(line)")
            }
        }
    }

    /// A `worker-elect` event: its bid is kept, and acknowledged with `worker-elect-ack`.
    private func heardElection(_ event: CeleryObject) async {
        if let missing = ["id", "clock", "hostname", "pid", "topic", "action", "cver"].first(where: { event[$0] == nil }) {
            logger.error("election request missing field \(PythonRepr.repr(.string(missing)))")
            return
        }
        guard let id = event["id"]?.stringValue, let clock = event["clock"]?.intValue, let hostname = event["hostname"]?.stringValue,
            let topic = event["topic"]?.stringValue
        else { return }
        let pid = event["pid"].map { $0.stringValue ?? PythonRepr.repr($0) } ?? ""
        let bid = GossipState.Bid(clock: clock, process: "\(hostname).\(pid)", topic: topic, action: event["action"] ?? .null)
        gossip.withLock { $0.bid(id, bid) }
        await service.events?.sendWorkerEvent("worker-elect-ack", ["id": .string(id)])
    }

    /// The `election` remote control command: this worker holds an election, which every gossiping worker answers.
    func holdElection(_ arguments: CeleryObject) async -> CeleryValue {
        guard gossips, let events = service.events, let id = arguments["id"]?.stringValue,
            let topic = arguments["topic"]?.stringValue
        else { return .null }
        gossip.withLock { $0.hold(id) }
        await events.sendWorkerEvent(
            "worker-elect", ["id": .string(id), "topic": .string(topic), "action": arguments["action"] ?? .null, "cver": 1])
        return .null
    }

    /// The winner's `task` action: the signature is sent, as Celery's `Gossip.call_task` applies it.
    private func callElectedTask(_ action: CeleryValue) async {
        guard let signature = Signature(action), let client = service.client else {
            logger.error("Could not call task: \(PythonRepr.truncated(PythonRepr.repr(action))) is not a signature")
            return
        }
        do {
            try await client.apply(signature)
        } catch {
            logger.error("Could not call task: \(error.message)")
        }
    }
}
