/// The serializers Celery names in `task_serializer`, `result_serializer` and `accept_content`.
public enum CeleryContentType: String, Sendable, CaseIterable {
    case json = "application/json"
    case msgpack = "application/x-msgpack"

    /// Celery's short name: `json` or `msgpack`.
    public var serializerName: String {
        switch self {
        case .json: "json"
        case .msgpack: "msgpack"
        }
    }

    /// The `content-encoding` Python writes next to this content type.
    public var contentEncoding: String {
        switch self {
        case .json: "utf-8"
        case .msgpack: "binary"
        }
    }

    /// Looks a serializer up by Celery's short name (`json`, `msgpack`) or by MIME type.
    public init?(name: String) {
        switch name.lowercased() {
        case "json", "application/json": self = .json
        case "msgpack", "application/x-msgpack": self = .msgpack
        default: return nil
        }
    }

    /// Serializes a value. JSON writes every value; msgpack fails on an integer beyond 64 bits, as Python's does
    /// (kombu then raises `EncodeError`).
    public func encode(_ value: CeleryValue) throws(CeleryProtocolError) -> [UInt8] {
        switch self {
        case .json: CeleryJSON.encode(value)
        case .msgpack: try CeleryMsgpack.encode(value)
        }
    }

    /// Deserializes a value.
    public func decode(_ bytes: some Collection<UInt8>) throws(CeleryProtocolError) -> CeleryValue {
        switch self {
        case .json: try CeleryJSON.decode(bytes)
        case .msgpack: try CeleryMsgpack.decode(bytes)
        }
    }
}
