import CeleryProtocol
import OrderedCollections

/// What a running task knows about the request that started it (Python's `self.request`).
public struct TaskRequest: Sendable {
    /// The fields, in one immutable object that copies share (the request travels in the task's context, which the
    /// task body receives by value). A change makes a new object.
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
        var message: CeleryTaskMessage
        var deliveryInfo: DeliveryInfo
        var hostname: String
        var contentType: CeleryContentType
        var embed: CeleryTaskMessage.Embed
        var ignoreResult: Bool?
    }

    private final class Storage: Sendable {
        let fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var fields: Fields {
        get { storage.fields }
        set { storage = Storage(newValue) }
    }

    public var id: String {
        get { storage.fields.id }
        set { fields.id = newValue }
    }
    /// The registered name.
    public var name: String {
        get { storage.fields.name }
        set { fields.name = newValue }
    }
    public var args: [CeleryValue] {
        get { storage.fields.args }
        set { fields.args = newValue }
    }
    public var kwargs: OrderedDictionary<String, CeleryValue> {
        get { storage.fields.kwargs }
        set { fields.kwargs = newValue }
    }
    public var retries: Int {
        get { storage.fields.retries }
        set { fields.retries = newValue }
    }
    public var rootID: String? {
        get { storage.fields.rootID }
        set { fields.rootID = newValue }
    }
    public var parentID: String? {
        get { storage.fields.parentID }
        set { fields.parentID = newValue }
    }
    public var groupID: String? {
        get { storage.fields.groupID }
        set { fields.groupID = newValue }
    }
    public var groupIndex: Int? {
        get { storage.fields.groupIndex }
        set { fields.groupIndex = newValue }
    }
    public var eta: String? {
        get { storage.fields.eta }
        set { fields.eta = newValue }
    }
    public var expires: String? {
        get { storage.fields.expires }
        set { fields.expires = newValue }
    }
    /// Every message header, including custom ones sent with `apply_async(headers=…)`. Built from the message
    /// each time it is read (the worker itself reads only the fields above): keep a copy to read it often.
    public var headers: OrderedDictionary<String, CeleryValue> {
        get { storage.fields.message.headers }
        set { fields.message.headers = newValue }
    }
    public var deliveryInfo: DeliveryInfo {
        get { storage.fields.deliveryInfo }
        set { fields.deliveryInfo = newValue }
    }
    /// The node name of the worker running it (`celery@host`).
    public var hostname: String {
        get { storage.fields.hostname }
        set { fields.hostname = newValue }
    }
    /// The serializer the message used.
    public var contentType: CeleryContentType {
        get { storage.fields.contentType }
        set { fields.contentType = newValue }
    }
    /// The embed (callbacks, errbacks, chain, chord).
    public var embed: CeleryTaskMessage.Embed {
        get { storage.fields.embed }
        set { fields.embed = newValue }
    }
    /// Whether the producer asked not to store the result (`nil`: the task's own default).
    public var ignoreResult: Bool? {
        get { storage.fields.ignoreResult }
        set { fields.ignoreResult = newValue }
    }

    init(message: CeleryTaskMessage, deliveryInfo: DeliveryInfo, hostname: String) {
        storage = Storage(
            Fields(
                id: message.id, name: message.name, args: message.args, kwargs: message.kwargs,
                retries: message.retries, rootID: message.rootID, parentID: message.parentID,
                groupID: message.groupID, groupIndex: message.groupIndex, eta: message.eta,
                expires: message.expires, message: message, deliveryInfo: deliveryInfo, hostname: hostname,
                contentType: message.contentType, embed: message.embed, ignoreResult: message.ignoreResult))
    }
}
