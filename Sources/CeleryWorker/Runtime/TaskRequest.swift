import CeleryProtocol
import OrderedCollections

/// What a running task knows about the request that started it (Python's `self.request`).
public struct TaskRequest: Sendable {
    public var id: String
    /// The registered name.
    public var name: String
    public var args: [CeleryValue]
    public var kwargs: OrderedDictionary<String, CeleryValue>
    public var retries: Int
    public var rootID: String?
    public var parentID: String?
    public var groupID: String?
    public var groupIndex: Int?
    public var eta: String?
    public var expires: String?
    /// Every message header, including custom ones sent with `apply_async(headers=…)`. Built from the message
    /// each time it is read (the worker itself reads only the fields above): keep a copy to read it often.
    public var headers: OrderedDictionary<String, CeleryValue> {
        get { message.headers }
        set { message.headers = newValue }
    }
    /// Holds the headers as the message carried them.
    private var message: CeleryTaskMessage
    public var deliveryInfo: DeliveryInfo
    /// The node name of the worker running it (`celery@host`).
    public var hostname: String
    /// The serializer the message used.
    public var contentType: CeleryContentType
    /// The embed (callbacks, errbacks, chain, chord).
    public var embed: CeleryTaskMessage.Embed
    /// Whether the producer asked not to store the result (`nil`: the task's own default).
    public var ignoreResult: Bool?

    init(message: CeleryTaskMessage, deliveryInfo: DeliveryInfo, hostname: String) {
        self.id = message.id
        self.name = message.name
        self.args = message.args
        self.kwargs = message.kwargs
        self.retries = message.retries
        self.rootID = message.rootID
        self.parentID = message.parentID
        self.groupID = message.groupID
        self.groupIndex = message.groupIndex
        self.eta = message.eta
        self.expires = message.expires
        self.message = message
        self.deliveryInfo = deliveryInfo
        self.hostname = hostname
        self.contentType = message.contentType
        self.embed = message.embed
        self.ignoreResult = message.ignoreResult
    }
}
