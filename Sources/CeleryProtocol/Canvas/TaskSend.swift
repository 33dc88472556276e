import OrderedCollections

/// Everything Python's `apply_async` puts in a protocol v2 message, and the envelope it makes of it: headers and
/// properties in kombu's order, the `[args, kwargs, embed]` body in the chosen serializer.
public struct TaskSend: Sendable {
    public var name: String
    public var id: String
    public var args: [CeleryValue]
    /// `argsrepr` shows the args as a list (`[10, 20]`) rather than a tuple (`(10, 20)`): Python does so for an
    /// immutable signature, whose args it keeps as the list it decoded.
    public var argsShownAsList = false
    /// `argsrepr` and `kwargsrepr` as `apply_async(argsrepr=…, kwargsrepr=…)` gives them (to hide what the log
    /// and monitors should not show); `nil`: the repr of the arguments.
    public var argsRepr: String?
    public var kwargsRepr: String?
    public var kwargs: CeleryObject
    public var embed: CeleryTaskMessage.Embed
    public var shadow: String?
    /// ISO 8601 times.
    public var eta: String?
    public var expires: String?
    /// kombu's `expiration` property: milliseconds until `expires`, as a string.
    public var expirationMilliseconds: Int?
    public var groupID: String?
    public var groupIndex: Int?
    public var retries = 0
    /// `timelimit`: `[hard, soft]`, each a number or `null`.
    public var timeLimit: [CeleryValue] = [.null, .null]
    /// `nil`: the task is its own root.
    public var rootID: String?
    public var parentID: String?
    /// `gen<pid>@<host>`.
    public var origin: String
    public var ignoreResult: CeleryValue = false
    /// How many times the task was replaced on its way here (`Task.replace`); the `replaced_task_nesting` header.
    public var replacedTaskNesting: Int = 0
    /// Custom headers (`apply_async(headers=…)`), after Celery's own.
    public var extraHeaders: CeleryObject = [:]
    /// The sender's `reply_to` oid.
    public var replyTo: String
    public var exchange = ""
    /// The queue on Redis.
    public var routingKey: String
    public var priority: Int?
    public var contentType: CeleryContentType
    /// How the body is compressed (`compression`); `nil`: not at all, Celery's default.
    public var compression: KombuCompression?
    public var deliveryTag: String

    public init(
        name: String, id: String, args: [CeleryValue] = [], kwargs: CeleryObject = [:],
        embed: CeleryTaskMessage.Embed = CeleryTaskMessage.Embed(), origin: String, replyTo: String,
        routingKey: String = "celery", contentType: CeleryContentType = .json, deliveryTag: String
    ) {
        self.name = name
        self.id = id
        self.args = args
        self.kwargs = kwargs
        self.embed = embed
        self.origin = origin
        self.replyTo = replyTo
        self.routingKey = routingKey
        self.contentType = contentType
        self.deliveryTag = deliveryTag
    }

    /// The headers in Celery's order (`celery/app/amqp.py` `as_task_v2`).
    public var headers: CeleryObject {
        var headers: CeleryObject = [
            "lang": "py", "task": .string(name), "id": .string(id), "shadow": shadow.map(CeleryValue.string) ?? .null,
            "eta": eta.map(CeleryValue.string) ?? .null, "expires": expires.map(CeleryValue.string) ?? .null,
            "group": groupID.map(CeleryValue.string) ?? .null,
            "group_index": groupIndex.map { .int(Int64($0)) } ?? .null, "retries": .int(Int64(retries)),
            "timelimit": .array(timeLimit), "root_id": .string(rootID ?? id),
            "parent_id": parentID.map(CeleryValue.string) ?? .null,
            "argsrepr": .string(
                argsRepr ?? PythonRepr.truncated(argsShownAsList ? PythonRepr.repr(.array(args)) : PythonRepr.tuple(args))),
            "kwargsrepr": .string(kwargsRepr ?? PythonRepr.truncated(PythonRepr.repr(.object(kwargs)))), "origin": .string(origin),
            "ignore_result": ignoreResult, "replaced_task_nesting": .int(Int64(replacedTaskNesting)), "stamped_headers": nil, "stamps": [:],
        ]
        for (key, value) in extraHeaders where headers[key] == nil { headers[key] = value }
        // kombu adds it last, as it compresses the body.
        if let compression { headers["compression"] = .string(compression.contentType) }
        return headers
    }

    /// The kombu envelope, ready to `LPUSH` once ``KombuEnvelope/encoded()`` (which compresses the body) wrote it.
    /// Fails where ``contentType`` cannot write the body (an integer beyond 64 bits in msgpack), as Python's
    /// `apply_async` raises `EncodeError`.
    public var envelope: KombuEnvelope {
        get throws(CeleryProtocolError) {
            var properties: CeleryObject = [
                "correlation_id": .string(id), "reply_to": .string(replyTo), "delivery_mode": 2,
            ]
            if let expirationMilliseconds { properties["expiration"] = .string(String(max(0, expirationMilliseconds))) }
            properties["delivery_info"] = ["exchange": .string(exchange), "routing_key": .string(routingKey)]
            properties["priority"] = .int(Int64(priority ?? 0))
            properties["body_encoding"] = "base64"
            properties["delivery_tag"] = .string(deliveryTag)
            let body: CeleryValue = [.array(args), .object(kwargs), embed.value]
            return KombuEnvelope(
                body: try contentType.encode(body), contentType: contentType.rawValue, contentEncoding: contentType.contentEncoding,
                headers: headers, properties: properties)
        }
    }
}
