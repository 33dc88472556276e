/// An error from decoding or encoding Celery's wire formats.
public struct CeleryProtocolError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        enum Base: Sendable, Hashable {
            case invalidJSON, invalidMsgpack, invalidBase64, invalidCompression, invalidEnvelope, invalidTaskMessage
            case unsupportedContentType, unsupportedValue, invalidSignature
        }

        let base: Base

        /// The text is not valid JSON.
        public static let invalidJSON = Code(base: .invalidJSON)
        /// The bytes are not one complete msgpack value.
        public static let invalidMsgpack = Code(base: .invalidMsgpack)
        /// A body declared as base64 does not decode.
        public static let invalidBase64 = Code(base: .invalidBase64)
        /// A compressed body names a compression this worker does not support, or does not decompress.
        public static let invalidCompression = Code(base: .invalidCompression)
        /// The kombu envelope lacks a field or has one of the wrong type.
        public static let invalidEnvelope = Code(base: .invalidEnvelope)
        /// The body or headers do not form a protocol v1 or v2 task message.
        public static let invalidTaskMessage = Code(base: .invalidTaskMessage)
        /// The content type is not accepted (for example pickle or yaml); the body was never decoded.
        public static let unsupportedContentType = Code(base: .unsupportedContentType)
        /// A value cannot be represented (an integer beyond 64 bits, a msgpack extension type).
        public static let unsupportedValue = Code(base: .unsupportedValue)
        /// A signed body (Celery's `auth` serializer) is malformed, names an unknown or expired certificate, or its
        /// signature does not verify (Celery's `SecurityError`).
        public static let invalidSignature = Code(base: .invalidSignature)

        public var description: String {
            switch base {
            case .invalidJSON: "invalid JSON"
            case .invalidMsgpack: "invalid msgpack"
            case .invalidBase64: "invalid base64 body"
            case .invalidCompression: "invalid compressed body"
            case .invalidEnvelope: "invalid message envelope"
            case .invalidTaskMessage: "invalid task message"
            case .unsupportedContentType: "content type not accepted"
            case .unsupportedValue: "unsupported value"
            case .invalidSignature: "invalid signature"
            }
        }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What exactly was wrong, for a log line.
    public var message: String
    /// The task id, when it could be read before the failure.
    public var taskID: String?
    /// The task name, when it could be read before the failure.
    public var taskName: String?

    public init(code: Code, message: String, taskID: String? = nil, taskName: String? = nil) {
        self.code = code
        self.message = message
        self.taskID = taskID
        self.taskName = taskName
    }

    public var description: String { "\(code): \(message)" }
}
