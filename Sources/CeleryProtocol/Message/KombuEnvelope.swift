import OrderedCollections

/// One message as kombu's Redis transport keeps it in a list: a JSON document holding the serialized body (base64
/// when `properties.body_encoding` is `"base64"`, compressed when the `compression` header says so), its content
/// type and encoding, headers and properties.
public struct KombuEnvelope: Sendable {
    /// The body bytes after base64 decoding and decompression: still serialized with ``contentType``. A message
    /// made here is compressed by ``encoded()`` when its `compression` header names a ``KombuCompression``.
    public var body: [UInt8]
    /// `application/json`, `application/x-msgpack`, …
    public var contentType: String
    /// `utf-8` for JSON, `binary` for msgpack.
    public var contentEncoding: String
    /// Task protocol v2 headers; `{}` for protocol v1.
    public var headers: OrderedDictionary<String, CeleryValue> {
        get { headerObject.object }
        set { headerObject = MessageObject(newValue) }
    }
    /// kombu's message properties (`delivery_tag`, `delivery_info`, `priority`, …).
    public var properties: OrderedDictionary<String, CeleryValue> {
        get { propertyObject.object }
        set { propertyObject = MessageObject(newValue) }
    }
    /// The headers, with the ones the worker reads for every task.
    private(set) var headerObject: MessageObject<TaskHeaderFields>
    /// The properties, with the ones the worker reads for every message.
    private var propertyObject: MessageObject<PropertyFields>

    public init(
        body: [UInt8],
        contentType: String,
        contentEncoding: String,
        headers: OrderedDictionary<String, CeleryValue>,
        properties: OrderedDictionary<String, CeleryValue>
    ) {
        self.body = body
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headerObject = MessageObject(headers)
        self.propertyObject = MessageObject(properties)
    }

    /// Parses the JSON text of a message popped from a Redis list.
    public init(decoding raw: some Collection<UInt8>) throws(CeleryProtocolError) {
        try self.init(decoding: Array(raw))
    }

    /// Parses the JSON text of a message popped from a Redis list. The headers and properties keep a reference to
    /// `bytes` (no copy), and are built from it only when read.
    public init(decoding bytes: [UInt8]) throws(CeleryProtocolError) {
        self = try bytes.withUnsafeBufferPointer { buffer throws(CeleryProtocolError) in
            var parser = JSONParser(buffer: buffer)
            let parsed: JSONParser.EnvelopeFields?
            do throws(CeleryProtocolError) {
                parsed = try parser.parseEnvelope(source: bytes)
            } catch {
                throw CeleryProtocolError(code: .invalidEnvelope, message: "message is not JSON: \(error.message)")
            }
            guard let parsed else {
                throw CeleryProtocolError(code: .invalidEnvelope, message: "message is not a JSON object")
            }
            return try KombuEnvelope(parsed, in: buffer)
        }
    }

    /// What kombu records in `unacked` for a message: its `properties.delivery_tag`, and the exchange and routing
    /// key of its `properties.delivery_info` (`""` when missing). Only `properties` is decoded; the rest of the
    /// message is scanned. `nil` when the message is not JSON, not an object, or carries no string tag.
    public static func deliveryFields(of raw: [UInt8]) -> (tag: String, exchange: String, routingKey: String)? {
        let properties = raw.withUnsafeBufferPointer { buffer -> PropertyFields? in
            var parser = JSONParser(buffer: buffer)
            return try? parser.parseEnvelopeProperties(source: raw)
        }
        guard let properties, case .string(let tag) = properties.deliveryTag else { return nil }
        let info = properties.deliveryInfo
        return (tag, info.exchange ?? "", info.routingKey ?? "")
    }

    private init(
        _ fields: JSONParser.EnvelopeFields, in buffer: UnsafeBufferPointer<UInt8>
    ) throws(CeleryProtocolError) {
        guard let headers = Self.object(fields.headers) else {
            throw CeleryProtocolError(code: .invalidEnvelope, message: "'headers' is not an object")
        }
        headerObject = headers
        let taskID = headers.fields.id.stringValue
        let taskName = headers.fields.task.stringValue
        func failure(_ message: String, _ code: CeleryProtocolError.Code = .invalidEnvelope) -> CeleryProtocolError {
            CeleryProtocolError(code: code, message: message, taskID: taskID, taskName: taskName)
        }
        guard let properties = Self.object(fields.properties) else {
            throw failure("'properties' is not an object")
        }
        propertyObject = properties
        let base64 = properties.fields.bodyEncoding.stringValue == "base64"
        func decodedBody(_ text: some Collection<UInt8>) throws(CeleryProtocolError) -> [UInt8] {
            guard base64 else { return Array(text) }
            guard let decoded = Base64.decode(text) else {
                throw failure("body is declared base64 but does not decode", .invalidBase64)
            }
            return decoded
        }
        var body: [UInt8]
        switch fields.body {
        case .raw(let range)?:
            let text = UnsafeBufferPointer(rebasing: buffer[range])
            // Read straight from the message, so not yet checked as a JSON string is: base64 needs no check.
            if !base64, UTF8Text.validating(text) == nil {
                throw CeleryProtocolError(
                    code: .invalidEnvelope, message: "message is not JSON: string is not valid UTF-8 at byte \(range.lowerBound)")
            }
            body = try decodedBody(text)
        case .value(.string(let text))?:
            body = try decodedBody(text.utf8)
        default:
            throw failure("'body' is missing or not a string")
        }
        switch headers.fields.compression {
        case .null:
            break
        case .string(let name):
            guard let method = KombuCompression(name: name) else {
                throw failure(
                    "compression '\(name)' is not supported (supported: \(KombuCompression.supportedNames), by kombu's names)", .invalidCompression)
            }
            do throws(CeleryProtocolError) {
                body = try method.decompress(body)
            } catch {
                throw failure(error.message, .invalidCompression)
            }
        default:
            throw failure("'compression' is not a string", .invalidCompression)
        }
        self.body = body
        self.contentType = fields.contentType?.stringValue ?? "application/json"
        self.contentEncoding = fields.contentEncoding?.stringValue ?? "utf-8"
    }

    /// `headers` or `properties` as the parser left them; `nil` when the member is neither an object nor null
    /// (missing or null: an empty object, as in kombu).
    private static func object<Fields>(_ member: JSONParser.ScannedObject<Fields>?) -> MessageObject<Fields>? {
        switch member {
        case .object(let object)?: object
        case .other(.object(let value))?: MessageObject(value)
        case .other(.null)?, nil: MessageObject([:])
        default: nil
        }
    }

    /// The JSON document kombu stores for this envelope, with the body base64-encoded, after compressing it when
    /// the `compression` header names a ``KombuCompression``.
    public func encoded() -> [UInt8] {
        var fields = OrderedDictionary<String, CeleryValue>()
        var body = self.body
        if case .string(let name) = headerObject.fields.compression, let method = KombuCompression(name: name) {
            body = method.compress(body)
        }
        fields["body"] = .string(String(decoding: Base64.encode(body), as: UTF8.self))
        fields["content-encoding"] = .string(contentEncoding)
        fields["content-type"] = .string(contentType)
        fields["headers"] = .object(headers)
        var properties = self.properties
        properties["body_encoding"] = "base64"
        fields["properties"] = .object(properties)
        return CeleryJSON.encode(.object(fields))
    }

    /// `properties.delivery_tag`.
    public var deliveryTag: String? { propertyObject.fields.deliveryTag.stringValue }

    /// Where the message was published: `properties.delivery_info`, with the priority and redelivery flag.
    public var deliveryInfo: DeliveryInfo {
        let info = propertyObject.fields.deliveryInfo
        let redelivered = info.redelivered ?? headerObject.fields.redelivered.boolValue ?? false
        return DeliveryInfo(
            exchange: info.exchange ?? "",
            routingKey: info.routingKey ?? "",
            priority: propertyObject.fields.priority.intValue ?? 0,
            redelivered: redelivered
        )
    }
}

/// Where a message came from, as kombu reports it in `delivery_info`.
public struct DeliveryInfo: Sendable, Hashable {
    /// The exchange it was published to; `""` for task messages sent straight to a queue.
    public var exchange: String
    /// The routing key; for task messages, the queue name.
    public var routingKey: String
    /// `properties.priority` as given by the producer (not clamped).
    public var priority: Int
    /// Whether the message was given back to the queue and delivered again.
    public var redelivered: Bool

    public init(exchange: String, routingKey: String, priority: Int, redelivered: Bool) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.priority = priority
        self.redelivered = redelivered
    }
}

/// The JSON document of messages that differ only in their body and their `delivery_tag` (event messages), cut
/// once around those two: ``encoded(body:deliveryTag:)`` writes the bytes ``KombuEnvelope/encoded()`` writes for
/// such a message, without building its headers and properties each time.
public struct KombuEnvelopeTemplate: Sendable {
    private let head: [UInt8]
    private let middle: [UInt8]
    private let tail: [UInt8]

    /// A template for messages with these fields; `properties` must hold a `delivery_tag` (its value is replaced by
    /// each message's). `nil` when the document cannot be cut around the body and the tag: a `compression` header
    /// (the body would be compressed), no `delivery_tag`, or another field whose text holds the tag's marker.
    public init?(
        contentType: String, contentEncoding: String, headers: OrderedDictionary<String, CeleryValue>,
        properties: OrderedDictionary<String, CeleryValue>
    ) {
        let marker = "\u{1}kombu-delivery-tag\u{1}"
        guard headers["compression"] == nil, properties["delivery_tag"] != nil else { return nil }
        var properties = properties
        properties["delivery_tag"] = .string(marker)
        let document = KombuEnvelope(
            body: [], contentType: contentType, contentEncoding: contentEncoding, headers: headers, properties: properties
        ).encoded()
        let start = Array(#"{"body": ""#.utf8)
        var encodedMarker: [UInt8] = []
        CeleryJSON.appendString(marker, into: &encodedMarker)
        // The body comes first, empty: `{"body": ""`; the marker, quoted, once after it.
        guard document.starts(with: start + [UInt8(ascii: "\"")]) else { return nil }
        let rest = document[start.count...]
        let found = Self.ranges(of: encodedMarker, in: rest)
        guard found.count == 1, let range = found.first else { return nil }
        head = start
        middle = Array(rest[..<range.lowerBound])
        tail = Array(rest[range.upperBound...])
    }

    private static func ranges(of needle: [UInt8], in haystack: ArraySlice<UInt8>) -> [Range<Int>] {
        guard !needle.isEmpty, haystack.count >= needle.count else { return [] }
        var found: [Range<Int>] = []
        var index = haystack.startIndex
        while index + needle.count <= haystack.endIndex {
            if haystack[index..<index + needle.count].elementsEqual(needle) {
                found.append(index..<index + needle.count)
                index += needle.count
            } else {
                index += 1
            }
        }
        return found
    }

    /// The document of the message with this (serialized, uncompressed) body and delivery tag.
    public func encoded(body: [UInt8], deliveryTag: String) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(head.count + (body.count + 2) / 3 * 4 + middle.count + deliveryTag.utf8.count + 2 + tail.count)
        output += head
        Base64.append(body, into: &output)
        output += middle
        CeleryJSON.appendString(deliveryTag, into: &output)
        output += tail
        return output
    }
}
