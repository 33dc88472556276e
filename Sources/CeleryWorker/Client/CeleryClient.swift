import CeleryProtocol
import Foundation
import Logging
import OrderedCollections
import Synchronization

/// Options of one task call, as Python's `apply_async` takes them.
public struct TaskSendOptions: Sendable {
    /// Run no earlier than this many seconds from now.
    public var countdown: Double?
    /// Run no earlier than this Unix time.
    public var eta: Double?
    /// Do not run after this many seconds from now (stored REVOKED `expired` instead).
    public var expires: Double?
    /// The queue to send to; `nil` uses the client's default queue.
    public var queue: String?
    /// 0 to 9 (kombu's Redis priority steps: 0, 3, 6, 9).
    public var priority: Int?
    /// The body's serializer; `nil` uses the client's.
    public var serializer: CeleryContentType?
    /// How the body is compressed; `nil` uses the client's.
    public var compression: KombuCompression?
    /// Custom message headers.
    public var headers: CeleryObject
    /// The task id; `nil` makes a new UUID.
    public var taskID: String?
    /// Ask the worker not to store the result.
    public var ignoreResult: Bool?
    /// `time_limit` and `soft_time_limit`, in seconds.
    public var timeLimit: Double?
    public var softTimeLimit: Double?
    /// Callbacks and errbacks (`link`, `link_error`).
    public var link: [Signature]
    public var linkError: [Signature]
    /// A named exchange to send to instead of a queue (with no ``queue``): the message goes to every queue bound to
    /// it for ``routingKey``, as kombu's `_lookup` finds them in `_kombu.binding.<exchange>`; sending throws when
    /// none is (kombu's Redis transport drops the message).
    public var exchange: String?
    /// With ``exchange``, the routing key; without it, the queue (Celery's anonymous exchange).
    public var routingKey: String?
    /// `topic`: ``exchange``'s bindings are matched as a topic exchange's patterns (`feed.#`), as when a Python
    /// producer declares `Exchange(name, type="topic")`; otherwise by equal routing keys, as a direct exchange's.
    public var exchangeType: String?

    public init(
        countdown: Double? = nil, eta: Double? = nil, expires: Double? = nil, queue: String? = nil, priority: Int? = nil,
        serializer: CeleryContentType? = nil, headers: CeleryObject = [:], taskID: String? = nil, ignoreResult: Bool? = nil,
        timeLimit: Double? = nil, softTimeLimit: Double? = nil, link: [Signature] = [], linkError: [Signature] = [],
        compression: KombuCompression? = nil, exchange: String? = nil, routingKey: String? = nil, exchangeType: String? = nil
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.exchangeType = exchangeType
        self.countdown = countdown
        self.eta = eta
        self.expires = expires
        self.queue = queue
        self.priority = priority
        self.serializer = serializer
        self.compression = compression
        self.headers = headers
        self.taskID = taskID
        self.ignoreResult = ignoreResult
        self.timeLimit = timeLimit
        self.softTimeLimit = softTimeLimit
        self.link = link
        self.linkError = linkError
    }

    /// The options as a signature carries them.
    public var signatureOptions: CeleryObject {
        var options = CeleryObject()
        if let taskID { options["task_id"] = .string(taskID) }
        if let countdown { options["countdown"] = .double(countdown) }
        if let eta { options["eta"] = .string(CeleryTimestamp.isoformat(unixSeconds: eta)) }
        if let expires { options["expires"] = .double(expires) }
        if let queue { options["queue"] = .string(queue) }
        if let priority { options["priority"] = .int(Int64(priority)) }
        if let serializer { options["serializer"] = .string(serializer.serializerName) }
        if let compression { options["compression"] = .string(compression.contentType) }
        if !headers.isEmpty { options["headers"] = .object(headers) }
        if let ignoreResult { options["ignore_result"] = .bool(ignoreResult) }
        if let timeLimit { options["time_limit"] = .double(timeLimit) }
        if let softTimeLimit { options["soft_time_limit"] = .double(softTimeLimit) }
        if !link.isEmpty { options["link"] = .array(link.map(\.value)) }
        if !linkError.isEmpty { options["link_error"] = .array(linkError.map(\.value)) }
        if let exchange { options["exchange"] = .string(exchange) }
        if let routingKey { options["routing_key"] = .string(routingKey) }
        if let exchangeType { options["exchange_type"] = .string(exchangeType) }
        return options
    }
}

/// Sends tasks to Celery workers, Swift or Python, exactly as Python's `apply_async` does (protocol v2, JSON or
/// msgpack), and waits for their results through the Redis backend's pub/sub.
///
/// ```swift
/// let client = CeleryClient(
///     brokerURL: try RedisURL(parsing: "redis://127.0.0.1:6379/1"),
///     resultBackendURL: try RedisURL(parsing: "redis://127.0.0.1:6379/0"))
/// let sum = try await client.send("tasks.add", args: [2, 3]).get(as: Int.self)
/// let workflow = Signature.chain([Signature(task: "tasks.add", args: [1, 2]), Signature(task: "tasks.mul", args: [10])])
/// let product = try await client.apply(workflow).get()
/// ```
public final class CeleryClient: Sendable {
    let broker: RedisBroker
    let backend: RedisResultBackend?
    let backendURL: RedisURL?
    /// Where tasks are sent.
    public let brokerURL: RedisURL
    /// Sends `task-sent` for each message (``init(brokerURL:resultBackendURL:serializer:resultSerializer:resultExpires:defaultQueue:compression:brokerKeyPrefix:resultKeyPrefix:brokerTransport:routes:chord:messageSigning:sentEvents:)``).
    let sentEvents: EventDispatcher?
    /// The serializer of task bodies (`task_serializer`).
    public let serializer: CeleryContentType
    /// How task bodies are compressed (`task_compression`); `nil`: not at all.
    public let compression: KombuCompression?
    /// Where tasks without a queue go (`task_default_queue`).
    public let defaultQueue: String
    /// Signs every task message (Celery's `auth` serializer, ``MessageSigning``); `nil`: none.
    public let messageSigning: MessageSigning?
    /// `task_routes`: where tasks go by name, unless they are sent with a queue.
    public let routes: TaskRoutes
    /// `before_task_publish` and `after_task_publish` receivers (``WorkerSignals``), run around each message sent.
    let signals: WorkerSignals
    /// This client's oid (`reply_to`).
    let oid = UUID().uuidString.lowercased()
    private let declared = DeclaredQueues()

    /// A client of its own threads and connections. `compression` is its `task_compression`; `brokerKeyPrefix`
    /// the broker's `global_keyprefix` (as written); `resultKeyPrefix` what result keys start with
    /// (``WorkerConfiguration/resultKeyPrefix(normalizing:)`` of the result backend's `global_keyprefix`);
    /// `brokerTransport` kombu's `sep` and `priority_steps`, which name the lists messages go to; `chord` Celery's
    /// chord settings, for the chords it sends; `messageSigning` signs every message, for workers that accept only
    /// signed ones; `signals` the `before_task_publish` and `after_task_publish` receivers run around each message.
    public convenience init(
        brokerURL: RedisURL, resultBackendURL: RedisURL? = nil, serializer: CeleryContentType = .json,
        resultSerializer: CeleryContentType = .json, resultExpires: Int? = 86_400, defaultQueue: String = "celery",
        compression: KombuCompression? = nil, brokerKeyPrefix: String = "", resultKeyPrefix: String = "",
        brokerTransport: RedisTransportOptions = RedisTransportOptions(), routes: TaskRoutes = TaskRoutes(),
        chord: RedisResultBackend.ChordOptions = RedisResultBackend.ChordOptions(), messageSigning: MessageSigning? = nil,
        signals: WorkerSignals = WorkerSignals()
    ) {
        self.init(
            brokerURL: brokerURL, resultBackendURL: resultBackendURL, serializer: serializer, resultSerializer: resultSerializer,
            resultExpires: resultExpires, defaultQueue: defaultQueue, compression: compression, brokerKeyPrefix: brokerKeyPrefix,
            resultKeyPrefix: resultKeyPrefix, brokerTransport: brokerTransport, routes: routes, chord: chord,
            messageSigning: messageSigning, sentEvents: nil, signals: signals)
    }

    /// The client of a worker's tasks (`context.send`): with `task_send_sent_event`, `sentEvents` sends `task-sent`
    /// for each message, as Celery's producer does in a Python worker.
    init(
        brokerURL: RedisURL, resultBackendURL: RedisURL?, serializer: CeleryContentType, resultSerializer: CeleryContentType,
        resultExpires: Int?, defaultQueue: String, compression: KombuCompression?, brokerKeyPrefix: String, resultKeyPrefix: String,
        brokerTransport: RedisTransportOptions, routes: TaskRoutes, chord: RedisResultBackend.ChordOptions,
        messageSigning: MessageSigning?, sentEvents: EventDispatcher?, signals: WorkerSignals
    ) {
        self.sentEvents = sentEvents
        self.signals = signals
        self.messageSigning = messageSigning

        self.broker = RedisBroker(
            blocking: RedisClient(url: brokerURL),
            commands: RedisClient(url: brokerURL), keyPrefix: brokerKeyPrefix, transport: brokerTransport)
        self.backend = resultBackendURL.map {
            RedisResultBackend(
                client: RedisClient(url: $0), serializer: resultSerializer, expires: resultExpires, keyPrefix: resultKeyPrefix,
                chord: chord)
        }
        self.backendURL = resultBackendURL
        self.brokerURL = brokerURL
        self.serializer = serializer
        self.compression = compression
        self.defaultQueue = defaultQueue
        self.routes = routes
    }

    /// Closes the client's connections (they open again on the next use). Its threads end when it is released.
    public func shutdown() async {
        broker.blocking.close()
        broker.commands.close()
        backend?.client.close()
    }

    /// A step of sending a message (declaring its queue, publishing it), tried again as Python's `apply_async` does
    /// with Celery's default `task_publish_retry_policy`: while the broker is unreachable, 3 times, after 0, 0.2 and
    /// 0.4 s.
    static func whilePublishing(_ step: () async throws(CeleryWorkerError) -> Void) async throws(CeleryWorkerError) {
        try await untilReachable(retries: 3, delay: { 0.2 * Double($0 - 1) }, step)
    }

    var sender: CanvasSender {
        let broker = self.broker
        let backend = self.backend
        let declared = self.declared
        let sentEvents = self.sentEvents
        let messageSigning = self.messageSigning
        let signals = self.signals
        return CanvasSender(
            publish: { envelope, queue, priority throws(CeleryWorkerError) in
                // kombu declares a queue (its bindings) the first time a producer sends to it.
                if declared.insert(queue) {
                    do throws(CeleryWorkerError) {
                        try await Self.whilePublishing { () throws(CeleryWorkerError) in try await broker.declare(queues: [queue]) }
                    } catch {
                        declared.remove(queue)
                        throw error
                    }
                }
                try await signals.publishing(envelope, queue: queue, logger: Self.signalsLogger) { envelope throws(CeleryWorkerError) in
                    let sealed = try messageSigning?.seal(envelope) ?? envelope
                    let encoded = sealed.encoded()
                    try await Self.whilePublishing { () throws(CeleryWorkerError) in
                        try await broker.publish(encoded, queue: queue, priority: priority)
                    }
                    await sentEvents?.sendTaskSent(envelope, queue: queue)
                }
            },
            route: { exchange, routingKey, topic throws(CeleryWorkerError) in
                try await broker.boundQueues(exchange: exchange, routingKey: routingKey, topic: topic)
            },
            setChordSize: { groupID, size throws(CeleryWorkerError) in
                try await backend?.setChordSize(groupID: groupID, size: size)
            },
            saveGroup: { groupID, result throws(CeleryWorkerError) in
                try await backend?.saveGroup(groupID: groupID, result: result)
            },
            origin: "gen\(Host.pid)@\(Host.name)", replyTo: oid, defaultQueue: defaultQueue, routes: routes,
            contentType: serializer, compression: compression,
            signaturesAreDecoded: false, isoformat: { CeleryTimestamp.isoformat(unixSeconds: $0) })
    }

    /// Where a publish signal's receiver that throws is logged.
    static let signalsLogger = Logger(label: "celery.signals")

    /// Sends a task by name.
    @discardableResult
    public func send(
        _ task: String, args: [CeleryValue] = [], kwargs: CeleryObject = [:], options: TaskSendOptions = TaskSendOptions()
    ) async throws(CeleryWorkerError) -> AsyncResult {
        try await apply(Signature(task: task, args: args, kwargs: kwargs, options: options.signatureOptions))
    }

    /// Sends a task, chain or chord signature; the handle is for its final result (the last step of a chain, the
    /// body of a chord). `options` (``TaskSendOptions/signatureOptions`` or Celery's names) apply on top of the
    /// signature's own.
    @discardableResult
    public func apply(_ signature: Signature, args: [CeleryValue] = [], options: CeleryObject = [:]) async throws(CeleryWorkerError)
        -> AsyncResult
    {
        try await send(signature, args: args, options: options, fallbackPriority: nil).result
    }

    /// ``apply(_:args:options:)`` with a priority for tasks that name none (a running task's sends); also returns
    /// the node Celery lists in the sending task's `children` (see ``CanvasSender/apply(_:args:options:)``).
    func send(_ signature: Signature, args: [CeleryValue] = [], options: CeleryObject, fallbackPriority: Int?)
        async throws(CeleryWorkerError) -> (result: AsyncResult, node: CeleryValue)
    {
        let (frozen, id) = Self.freeze(signature)
        var sender = self.sender
        sender.fallbackPriority = fallbackPriority
        let node = try await sender.apply(frozen, args: args, options: options)
        return (result(id: id), node)
    }

    /// Sends a group; the handles are its members' results, in order.
    public func apply(group members: [Signature], args: [CeleryValue] = [], options: CeleryObject = [:])
        async throws(CeleryWorkerError) -> GroupResult
    {
        let frozen = members.map(Self.freeze)
        let groupID = options["task_id"]?.stringValue ?? CanvasSender.newID()
        var groupOptions = options
        groupOptions["task_id"] = .string(groupID)
        try await sender.apply(.group(frozen.map(\.0)), args: args, options: groupOptions)
        return GroupResult(id: groupID, results: frozen.map { result(id: $0.1) })
    }

    /// A handle for the result of a task sent before.
    public func result(id: String) -> AsyncResult {
        AsyncResult(id: id, client: self)
    }

    /// Gives every task a `task_id` up front, so the final result's id is known before anything is sent.
    static func freeze(_ signature: Signature) -> (Signature, String) {
        var frozen = signature
        switch signature.subtaskType {
        case "chain":
            let steps = signature.tasks.map(freeze)
            frozen = .chain(steps.map(\.0), options: signature.options)
            return (frozen, steps.last?.1 ?? CanvasSender.newID())
        case "chord":
            guard let parts = signature.chordParts else { return (signature, CanvasSender.newID()) }
            let body = freeze(parts.body)
            frozen = .chord(parts.header.map { freeze($0).0 }, body: body.0, options: signature.options)
            return (frozen, body.1)
        case "group":
            frozen = .group(signature.tasks.map { freeze($0).0 }, options: signature.options)
            let id = signature.options["task_id"]?.stringValue ?? CanvasSender.newID()
            frozen.options["task_id"] = .string(id)
            return (frozen, id)
        default:
            let id = signature.options["task_id"]?.stringValue ?? CanvasSender.newID()
            frozen.options["task_id"] = .string(id)
            return (frozen, id)
        }
    }
}

/// The queues a client already declared, behind a lock.
final class DeclaredQueues: Sendable {
    private let queues = Mutex<Set<String>>([])

    /// Adds `queue`; returns whether it was new.
    func insert(_ queue: String) -> Bool {
        queues.withLock { $0.insert(queue).inserted }
    }

    /// Forgets `queue` (its declaration failed), so the next message to it declares it again.
    func remove(_ queue: String) {
        _ = queues.withLock { $0.remove(queue) }
    }
}
