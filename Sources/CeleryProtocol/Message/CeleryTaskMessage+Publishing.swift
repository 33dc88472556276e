import OrderedCollections

extension CeleryTaskMessage {
    /// The protocol v2 envelope for this request: its headers and a `[args, kwargs, embed]` body serialized with
    /// ``contentType``, with `properties` as given (kombu's order: `correlation_id`, `reply_to`, `delivery_mode`,
    /// `delivery_info`, `priority`, `body_encoding`, `delivery_tag`). Fails where ``contentType`` cannot write the
    /// body (an integer beyond 64 bits in msgpack).
    public func envelope(properties: CeleryObject) throws(CeleryProtocolError) -> KombuEnvelope {
        var headers = self.headers
        if protocolVersion == 1 {
            // v1 requests are republished in v2, as Python's worker (task_protocol 2) does.
            headers["utc"] = nil
            headers["meth"] = nil
            headers["group_index"] = headers["group_index"] ?? .null
        }
        let body: CeleryValue = [.array(args), .object(kwargs), embed.value]
        return KombuEnvelope(
            body: try contentType.encode(body), contentType: contentType.rawValue,
            contentEncoding: contentType.contentEncoding, headers: headers, properties: properties)
    }

    /// The message `Task.retry` publishes: the same id, args and kwargs, `retries` + 1, an absolute `eta`, and
    /// `parent_id` set to the task's own id; `root_id`, `expires`, `timelimit` and priority are carried over, and
    /// `properties` gains `origin` and a fresh `delivery_tag`. The body is compressed with `compression` (Python's
    /// `task_compression`), whatever the message that came used.
    public func retryEnvelope(
        original: KombuEnvelope, eta: String, origin: String, ignoreResult: Bool, deliveryTag: String,
        compression: KombuCompression? = nil
    ) throws(CeleryProtocolError) -> KombuEnvelope {
        var message = self
        message.headers["retries"] = .int(Int64(retries + 1))
        message.headers["eta"] = .string(eta)
        message.headers["parent_id"] = .string(id)
        message.headers["origin"] = .string(origin)
        message.headers["ignore_result"] = .bool(ignoreResult)
        message.headers["redelivered"] = nil
        message.headers["compression"] = compression.map { .string($0.contentType) }
        var properties = CeleryObject()
        properties["correlation_id"] = original.properties["correlation_id"] ?? .string(id)
        properties["reply_to"] = original.properties["reply_to"] ?? .null
        properties["origin"] = .string(origin)
        properties["delivery_mode"] = original.properties["delivery_mode"] ?? 2
        if let expiration = original.properties["expiration"] { properties["expiration"] = expiration }
        let info = original.deliveryInfo
        properties["delivery_info"] = ["exchange": .string(info.exchange), "routing_key": .string(info.routingKey)]
        properties["priority"] = .int(Int64(info.priority))
        properties["body_encoding"] = "base64"
        properties["delivery_tag"] = .string(deliveryTag)
        return try message.envelope(properties: properties)
    }
}
