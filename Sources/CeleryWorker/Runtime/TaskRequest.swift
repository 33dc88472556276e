import CeleryProtocol
import OrderedCollections

/// What a running task knows about the request that started it (Python's `self.request`).
public struct TaskRequest: Sendable {
    /// The request, in one immutable object that copies share (the request travels in the task's context, which the
    /// task body receives by value). Its fields are read from the message until one is changed; a change makes a new
    /// object, holding every field from then on.
    private var storage: Storage

    private struct Fields: Sendable {
        var id: String
        var name: String
        var args: [CeleryValue]
        var kwargs: OrderedDictionary<String, CeleryValue>
        var retries: Int
        var rootID: String?
        var parentID: String?
        var groupID: String?
        var groupIndex: Int?
        var eta: String?
        var expires: String?
        var contentType: CeleryContentType
        var embed: CeleryTaskMessage.Embed
        var ignoreResult: Bool?

        init(_ message: CeleryTaskMessage) {
            id = message.id
            name = message.name
            args = message.args
            kwargs = message.kwargs
            retries = message.retries
            rootID = message.rootID
            parentID = message.parentID
            groupID = message.groupID
            groupIndex = message.groupIndex
            eta = message.eta
            expires = message.expires
            contentType = message.contentType
            embed = message.embed
            ignoreResult = message.ignoreResult
        }
    }

    private final class Storage: Sendable {
        let message: CeleryTaskMessage
        let deliveryInfo: DeliveryInfo
        let hostname: String
        /// Every field, once one was changed; `nil` while they are the message's.
        let changed: Fields?

        init(message: CeleryTaskMessage, deliveryInfo: DeliveryInfo, hostname: String, changed: Fields?) {
            self.message = message
            self.deliveryInfo = deliveryInfo
            self.hostname = hostname
            self.changed = changed
        }
    }

    private mutating func change(_ body: (inout Fields) -> Void) {
        var fields = storage.changed ?? Fields(storage.message)
        body(&fields)
        storage = Storage(
            message: storage.message, deliveryInfo: storage.deliveryInfo, hostname: storage.hostname, changed: fields)
    }

    public var id: String {
        get { storage.changed?.id ?? storage.message.id }
        set { change { $0.id = newValue } }
    }
    /// The registered name.
    public var name: String {
        get { storage.changed?.name ?? storage.message.name }
        set { change { $0.name = newValue } }
    }
    public var args: [CeleryValue] {
        get { storage.changed?.args ?? storage.message.args }
        set { change { $0.args = newValue } }
    }
    public var kwargs: OrderedDictionary<String, CeleryValue> {
        get { storage.changed?.kwargs ?? storage.message.kwargs }
        set { change { $0.kwargs = newValue } }
    }
    public var retries: Int {
        get { storage.changed?.retries ?? storage.message.retries }
        set { change { $0.retries = newValue } }
    }
    public var rootID: String? {
        get { storage.changed.map(\.rootID) ?? storage.message.rootID }
        set { change { $0.rootID = newValue } }
    }
    public var parentID: String? {
        get { storage.changed.map(\.parentID) ?? storage.message.parentID }
        set { change { $0.parentID = newValue } }
    }
    public var groupID: String? {
        get { storage.changed.map(\.groupID) ?? storage.message.groupID }
        set { change { $0.groupID = newValue } }
    }
    public var groupIndex: Int? {
        get { storage.changed.map(\.groupIndex) ?? storage.message.groupIndex }
        set { change { $0.groupIndex = newValue } }
    }
    public var eta: String? {
        get { storage.changed.map(\.eta) ?? storage.message.eta }
        set { change { $0.eta = newValue } }
    }
    public var expires: String? {
        get { storage.changed.map(\.expires) ?? storage.message.expires }
        set { change { $0.expires = newValue } }
    }
    /// The serializer the message used.
    public var contentType: CeleryContentType {
        get { storage.changed?.contentType ?? storage.message.contentType }
        set { change { $0.contentType = newValue } }
    }
    /// The embed (callbacks, errbacks, chain, chord).
    public var embed: CeleryTaskMessage.Embed {
        get { storage.changed?.embed ?? storage.message.embed }
        set { change { $0.embed = newValue } }
    }
    /// Whether the producer asked not to store the result (`nil`: the task's own default).
    public var ignoreResult: Bool? {
        get { storage.changed.map(\.ignoreResult) ?? storage.message.ignoreResult }
        set { change { $0.ignoreResult = newValue } }
    }
    /// Every message header, including custom ones sent with `apply_async(headers=…)`. Built from the message
    /// each time it is read (the worker itself reads only the fields above): keep a copy to read it often.
    /// Changing them leaves the fields above as they were.
    public var headers: OrderedDictionary<String, CeleryValue> {
        get { storage.message.headers }
        set {
            var message = storage.message
            message.headers = newValue
            storage = Storage(
                message: message, deliveryInfo: storage.deliveryInfo, hostname: storage.hostname,
                changed: storage.changed ?? Fields(storage.message))
        }
    }
    public var deliveryInfo: DeliveryInfo {
        get { storage.deliveryInfo }
        set {
            storage = Storage(message: storage.message, deliveryInfo: newValue, hostname: storage.hostname, changed: storage.changed)
        }
    }
    /// The node name of the worker running it (`celery@host`).
    public var hostname: String {
        get { storage.hostname }
        set {
            storage = Storage(message: storage.message, deliveryInfo: storage.deliveryInfo, hostname: newValue, changed: storage.changed)
        }
    }

    /// The message the request came in.
    var message: CeleryTaskMessage { storage.message }

    init(message: CeleryTaskMessage, deliveryInfo: DeliveryInfo, hostname: String) {
        storage = Storage(message: message, deliveryInfo: deliveryInfo, hostname: hostname, changed: nil)
    }
}
