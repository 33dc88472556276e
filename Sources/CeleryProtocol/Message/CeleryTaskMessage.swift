import OrderedCollections

/// A task request decoded from protocol v2 or v1, with v1 mapped onto v2's headers the way Celery's worker maps it.
public struct CeleryTaskMessage: Sendable {
    /// The fields, in one immutable object that copies share: a worker hands a message from its receive loop to the
    /// job, its request and its result, and copying it then costs one reference instead of a dozen. A change makes
    /// a new object (messages are changed rarely: a retry's headers, tests).
    private var storage: Storage

    private struct Fields: Sendable {
        var protocolVersion: Int
        var id: String
        var name: String
        var args: [CeleryValue]
        var kwargs: OrderedDictionary<String, CeleryValue>
        var embed: Embed
        var headerObject: MessageObject<TaskHeaderFields>
        var contentType: CeleryContentType
    }

    private final class Storage: Sendable {
        let fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var fields: Fields {
        get { storage.fields }
        set { storage = Storage(newValue) }
    }

    /// 2 for headers-based messages (including the "hybrid" form), 1 for the legacy body-dict form.
    public var protocolVersion: Int {
        get { storage.fields.protocolVersion }
        set { fields.protocolVersion = newValue }
    }
    /// The task id (`headers.id`).
    public var id: String {
        get { storage.fields.id }
        set { fields.id = newValue }
    }
    /// The registered task name (`headers.task`).
    public var name: String {
        get { storage.fields.name }
        set { fields.name = newValue }
    }
    /// Positional arguments.
    public var args: [CeleryValue] {
        get { storage.fields.args }
        set { fields.args = newValue }
    }
    /// Keyword arguments, in the order sent.
    public var kwargs: OrderedDictionary<String, CeleryValue> {
        get { storage.fields.kwargs }
        set { fields.kwargs = newValue }
    }
    /// Whether the embed names callbacks or a next chain step, what a success sends on; read in place, without
    /// copying the embed (the worker asks for every task).
    public var hasCallbacksOrChain: Bool {
        !storage.fields.embed.callbacks.isNull || !storage.fields.embed.chain.isNull
    }
    /// Whether the message is part of a chord's header (the embed names the chord body); read in place.
    public var isChordPart: Bool { !storage.fields.embed.chord.isNull }
    /// Callbacks, errbacks, chain and chord from the body's third element.
    public var embed: Embed {
        get { storage.fields.embed }
        set { fields.embed = newValue }
    }
    /// Every header as v2 carries it (for v1, the headers Celery builds from the body).
    public var headers: OrderedDictionary<String, CeleryValue> {
        get { storage.fields.headerObject.object }
        set { fields.headerObject = MessageObject(newValue) }
    }
    /// The headers (from a v2 message, built only when ``headers`` is read), with the ones this type's properties
    /// read.
    private var headerFields: TaskHeaderFields { storage.fields.headerObject.fields }
    /// The serializer the body used.
    public var contentType: CeleryContentType {
        get { storage.fields.contentType }
        set { fields.contentType = newValue }
    }

    /// The fourth part of a v2 body: what to run after this task.
    /// A protocol 2 body's three parts, as a fast path reads them.
    typealias BodyParts = (args: [CeleryValue], kwargs: OrderedDictionary<String, CeleryValue>, embed: Embed)

    public struct Embed: Sendable {
        public var callbacks: CeleryValue
        public var errbacks: CeleryValue
        public var chain: CeleryValue
        public var chord: CeleryValue

        public init(
            callbacks: CeleryValue = .null, errbacks: CeleryValue = .null, chain: CeleryValue = .null,
            chord: CeleryValue = .null
        ) {
            self.callbacks = callbacks
            self.errbacks = errbacks
            self.chain = chain
            self.chord = chord
        }

        init(_ value: CeleryValue?) {
            self.init(
                callbacks: value?["callbacks"] ?? .null,
                errbacks: value?["errbacks"] ?? .null,
                chain: value?["chain"] ?? .null,
                chord: value?["chord"] ?? .null
            )
        }

        /// The members Celery reads, in the order it writes them, for the fast body paths.
        enum Field { case callbacks, errbacks, chain, chord }
        static let layout = KeyLayout<Field>(entries: [
            (#""callbacks": "#, .callbacks), (#""errbacks": "#, .errbacks), (#""chain": "#, .chain),
            (#""chord": "#, .chord),
        ])

        /// Keeps a member's value (a later member with the same key replaces it), as the message fields do.
        mutating func set(_ field: Field, _ value: CeleryValue) {
            switch field {
            case .callbacks: callbacks = value
            case .errbacks: errbacks = value
            case .chain: chain = value
            case .chord: chord = value
            }
        }

        /// The embed as a dictionary in Celery's key order.
        public var value: CeleryValue {
            ["callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord]
        }
    }

    public init(
        protocolVersion: Int = 2, id: String, name: String, args: [CeleryValue] = [],
        kwargs: OrderedDictionary<String, CeleryValue> = [:], embed: Embed = Embed(),
        headers: OrderedDictionary<String, CeleryValue> = [:], contentType: CeleryContentType = .json
    ) {
        storage = Storage(
            Fields(
                protocolVersion: protocolVersion, id: id, name: name, args: args, kwargs: kwargs, embed: embed,
                headerObject: MessageObject(headers), contentType: contentType))
    }

    /// Decodes the task request carried by `envelope`.
    ///
    /// - Parameter accept: the content types this worker accepts (`accept_content`). A body of any other type is
    ///   never decoded: the error has code ``CeleryProtocolError/Code/unsupportedContentType``.
    public init(envelope: KombuEnvelope, accept: Set<CeleryContentType>) throws(CeleryProtocolError) {
        let headerID = envelope.headerObject.fields.id.stringValue
        let headerName = envelope.headerObject.fields.task.stringValue
        func failure(
            _ code: CeleryProtocolError.Code, _ message: String, id: String? = headerID,
            name: String? = headerName
        ) -> CeleryProtocolError {
            CeleryProtocolError(code: code, message: message, taskID: id, taskName: name)
        }
        guard let contentType = CeleryContentType(rawValue: envelope.contentType), accept.contains(contentType)
        else {
            throw failure(.unsupportedContentType, "content type '\(envelope.contentType)' is not accepted")
        }
        // The usual case, a protocol 2 body of Celery's shape, is read straight into its parts.
        if let headerName, let headerID,
            let parts = contentType == .json ? CeleryJSON.taskBody(envelope.body) : CeleryMsgpack.taskBody(envelope.body)
        {
            storage = Storage(
                Fields(
                    protocolVersion: 2, id: headerID, name: headerName, args: parts.args, kwargs: parts.kwargs,
                    embed: parts.embed, headerObject: envelope.headerObject, contentType: contentType))
            return
        }
        let body: CeleryValue
        do {
            body = try contentType.decode(envelope.body)
        } catch {
            throw failure(error.code, "body does not decode as \(contentType.serializerName): \(error.message)")
        }
        let protocolVersion: Int
        let id: String
        let name: String
        let args: [CeleryValue]
        let kwargs: OrderedDictionary<String, CeleryValue>
        let embed: Embed
        let headerObject: MessageObject<TaskHeaderFields>
        if let headerName {
            guard let headerID else { throw failure(.invalidTaskMessage, "header 'id' is missing") }
            protocolVersion = 2
            id = headerID
            name = headerName
            headerObject = envelope.headerObject
            switch body {
            case .array(let parts) where parts.count == 3:
                guard case .array(let positional) = parts[0] else {
                    throw failure(.invalidTaskMessage, "args (body[0]) is not a list")
                }
                guard case .object(let keywords) = parts[1] else {
                    throw failure(.invalidTaskMessage, "kwargs (body[1]) is not a dict")
                }
                switch parts[2] {
                case .object, .null: break
                default: throw failure(.invalidTaskMessage, "embed (body[2]) is not a dict")
                }
                args = positional
                kwargs = keywords
                embed = Embed(parts[2])
            case .array(let parts):
                throw failure(.invalidTaskMessage, "v2 body has \(parts.count) elements, expected [args, kwargs, embed]")
            case .object(let fields) where fields["args"] != nil:
                // Celery's "hybrid" form: v2 headers with a v1-style body.
                (args, kwargs) = try Self.argsAndKwargs(fields, failure: { failure(.invalidTaskMessage, $0) })
                embed = Embed(body)
            default:
                throw failure(.invalidTaskMessage, "v2 body is not a list [args, kwargs, embed]")
            }
        } else if case .object(let fields) = body, case .string(let bodyName)? = fields["task"] {
            guard case .string(let bodyID)? = fields["id"] else {
                throw failure(.invalidTaskMessage, "v1 body has no 'id'", id: nil, name: bodyName)
            }
            protocolVersion = 1
            id = bodyID
            name = bodyName
            (args, kwargs) = try Self.argsAndKwargs(
                fields, failure: { failure(.invalidTaskMessage, $0, id: bodyID, name: bodyName) })
            embed = Embed(
                callbacks: fields["callbacks"] ?? .null, errbacks: fields["errbacks"] ?? .null,
                chain: .null, chord: fields["chord"] ?? .null)
            headerObject = MessageObject(Self.headers(fromV1Body: fields))
        } else {
            throw failure(.invalidTaskMessage, "neither headers nor body name a task (unknown message)")
        }
        storage = Storage(
            Fields(
                protocolVersion: protocolVersion, id: id, name: name, args: args, kwargs: kwargs, embed: embed,
                headerObject: headerObject, contentType: contentType))
    }

    private static func argsAndKwargs(
        _ fields: OrderedDictionary<String, CeleryValue>, failure: (String) -> CeleryProtocolError
    ) throws(CeleryProtocolError) -> ([CeleryValue], OrderedDictionary<String, CeleryValue>) {
        let args: [CeleryValue]
        switch fields["args"] {
        case .array(let value)?: args = value
        case .null?, nil: args = []
        default: throw failure("'args' is not a list")
        }
        let kwargs: OrderedDictionary<String, CeleryValue>
        switch fields["kwargs"] {
        case .object(let value)?: kwargs = value
        case .null?, nil: kwargs = [:]
        default: throw failure("'kwargs' is not a dict")
        }
        return (args, kwargs)
    }

    /// The v2 headers Celery's `proto1_to_proto2` builds from a v1 body.
    static func headers(fromV1Body body: OrderedDictionary<String, CeleryValue>) -> OrderedDictionary<String, CeleryValue> {
        var headers = OrderedDictionary<String, CeleryValue>()
        for key in [
            "lang", "task", "id", "root_id", "parent_id", "group", "meth", "shadow", "eta", "expires",
            "retries", "timelimit", "argsrepr", "kwargsrepr", "origin",
        ] {
            headers[key] = body[key] ?? .null
        }
        if headers["retries"]?.isNull ?? true { headers["retries"] = 0 }
        if headers["timelimit"]?.isNull ?? true { headers["timelimit"] = [.null, .null] }
        headers["utc"] = body["utc"] ?? true
        return headers
    }
}

extension CeleryTaskMessage {
    private func header(_ value: CeleryValue) -> CeleryValue? {
        value.isNull ? nil : value
    }

    /// How many times this task has been retried.
    public var retries: Int { header(headerFields.retries)?.intValue ?? 0 }
    /// The id of the first task in the workflow.
    public var rootID: String? { header(headerFields.rootID)?.stringValue }
    /// The id of the task that sent this one.
    public var parentID: String? { header(headerFields.parentID)?.stringValue }
    /// The group this task belongs to.
    public var groupID: String? { header(headerFields.group)?.stringValue }
    /// The position in the group.
    public var groupIndex: Int? { header(headerFields.groupIndex)?.intValue }
    /// The ETA as sent (ISO 8601).
    public var eta: String? { header(headerFields.eta)?.stringValue }
    /// The expiry as sent (ISO 8601).
    public var expires: String? { header(headerFields.expires)?.stringValue }
    /// `ignore_result`: `nil` means "use the task's own default".
    public var ignoreResult: Bool? { header(headerFields.ignoreResult)?.boolValue }
    /// The display name to use in logs and events instead of ``name``.
    public var shadow: String? { header(headerFields.shadow)?.stringValue }
    /// `timelimit` as `(hard, soft)` seconds.
    public var timeLimit: (hard: Double?, soft: Double?) {
        guard case .array(let limits)? = header(headerFields.timeLimit), limits.count == 2 else { return (nil, nil) }
        return (limits[0].doubleValue, limits[1].doubleValue)
    }
    /// `argsrepr`, or a repr of the args when the producer did not send one.
    public var argsRepr: String {
        header(headerFields.argsRepr)?.stringValue ?? PythonRepr.tuple(args)
    }
    /// `kwargsrepr`, or a repr of the kwargs when the producer did not send one.
    public var kwargsRepr: String {
        header(headerFields.kwargsRepr)?.stringValue ?? PythonRepr.repr(.object(kwargs))
    }
    /// The `argsrepr`, `kwargsrepr`, `root_id` and `parent_id` headers as sent (`.null` when missing), for events.
    public var eventHeaders: (argsRepr: CeleryValue, kwargsRepr: CeleryValue, rootID: CeleryValue, parentID: CeleryValue) {
        (headerFields.argsRepr, headerFields.kwargsRepr, headerFields.rootID, headerFields.parentID)
    }
}
