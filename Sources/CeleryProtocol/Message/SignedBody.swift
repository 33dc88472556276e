/// A body as Celery's `auth` serializer writes it (`celery/security/serialization.py`, `SecureSerializer._pack`):
/// base64 text of five fields joined by the bytes 0x00 0x01, namely the signer's certificate id, the signature, the
/// content type and encoding of the signed body, and the signed body itself, which is the message's body as its own
/// serializer wrote it. The signature is over that body's bytes alone. Celery 5.5 and later write the id and the
/// signature in base64; Celery 5.4 and earlier wrote them as they are (``Layout``).
public struct SignedBody: Sendable, Equatable {
    /// The content type kombu registers the `auth` serializer under.
    public static let contentType = "application/data"
    /// The content encoding kombu registers the `auth` serializer with.
    public static let contentEncoding = "utf-8"
    /// What separates the fields (Celery's `DEFAULT_SEPARATOR`).
    static let separator: [UInt8] = [0x00, 0x01]

    /// How the signer's id and the signature are written.
    public enum Layout: String, Sendable, CaseIterable {
        /// In base64, so that no field holds the separator's bytes: Celery 5.5 and later.
        case celery55 = "celery-5.5"
        /// As they are, the signature's length being the signer's key's size: Celery 5.4 and earlier, which Celery
        /// 5.5 cannot read (nor 5.4 what 5.5 writes).
        case celery54 = "celery-5.4"
    }

    /// The id of the certificate whose key signed the body (Celery's `Certificate.get_id()`).
    public var signer: [UInt8]
    /// The RSA-PSS signature of ``body``.
    public var signature: [UInt8]
    /// The content type of ``body`` (`application/json`, …).
    public var contentType: String
    /// The content encoding of ``body`` (`utf-8`, `binary`).
    public var contentEncoding: String
    /// The signed body, serialized with ``contentType``.
    public var body: [UInt8]

    public init(signer: [UInt8], signature: [UInt8], contentType: String, contentEncoding: String, body: [UInt8]) {
        self.signer = signer
        self.signature = signature
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.body = body
    }

    /// Reads the text of a signed body in either ``Layout``, as `SecureSerializer._unpack` of Celery 5.5 and of 5.4
    /// read theirs. A signer's id always holds a space (Celery's id is the issuer, a space and the serial number),
    /// which base64 never does: that tells the layouts apart.
    ///
    /// - Parameter signatureLength: the length of the signatures of the signer whose id it is given (its key's size
    ///   in bytes), which the 5.4 layout needs: its signature is not delimited. It throws for an unknown signer.
    ///   In the 5.5 layout the last field is everything after the fourth separator, so a body may hold the
    ///   separator's bytes; in the 5.4 layout it ends at the next separator, as 5.4 reads it.
    public init(
        unpacking text: some Collection<UInt8>, signatureLength: (ArraySlice<UInt8>) throws(CeleryProtocolError) -> Int
    ) throws(CeleryProtocolError) {
        guard let raw = Base64.decode(text) else { throw Self.failure("the signed body is not base64") }
        guard let end = Self.firstSeparator(in: raw[...]) else { throw Self.failure("the signed body has 1 field, not 5") }
        if raw[..<end].contains(UInt8(ascii: " ")) {
            try self.init(celery54: raw, signerEnd: end, signatureLength: signatureLength)
            return
        }
        var fields: [ArraySlice<UInt8>] = []
        var rest = raw[...]
        while fields.count < 4, let end = Self.firstSeparator(in: rest) {
            fields.append(rest[..<end])
            rest = rest[(end + Self.separator.count)...]
        }
        guard fields.count == 4 else { throw Self.failure("the signed body has \(fields.count + 1) fields, not 5") }
        guard let signer = Base64.decode(fields[0]), let signature = Base64.decode(fields[1]) else {
            throw Self.failure("the signer or the signature is not base64")
        }
        try self.init(signer: signer, signature: signature, contentType: fields[2], contentEncoding: fields[3], body: rest)
    }

    /// Reads a signed body of Celery 5.5's layout, whose signer needs no lookup.
    public init(unpacking text: some Collection<UInt8>) throws(CeleryProtocolError) {
        try self.init(unpacking: text) { _ throws(CeleryProtocolError) in
            throw Self.failure("a signed body of Celery 5.4's layout needs the signer's key size")
        }
    }

    private init(
        celery54 raw: [UInt8], signerEnd: Int, signatureLength: (ArraySlice<UInt8>) throws(CeleryProtocolError) -> Int
    ) throws(CeleryProtocolError) {
        let signer = raw[..<signerEnd]
        let start = signerEnd + Self.separator.count
        let end = start + (try signatureLength(signer))
        guard end + Self.separator.count <= raw.count else { throw Self.failure("the signed body ends within its signature") }
        var fields: [ArraySlice<UInt8>] = []
        var rest = raw[(end + Self.separator.count)...]
        while fields.count < 3 {
            guard let next = Self.firstSeparator(in: rest) else {
                fields.append(rest)
                break
            }
            fields.append(rest[..<next])
            rest = rest[(next + Self.separator.count)...]
        }
        guard fields.count == 3 else { throw Self.failure("the signed body has \(fields.count + 2) fields, not 5") }
        try self.init(
            signer: Array(signer), signature: Array(raw[start..<end]), contentType: fields[0], contentEncoding: fields[1],
            body: fields[2])
    }

    private init(
        signer: [UInt8], signature: [UInt8], contentType: ArraySlice<UInt8>, contentEncoding: ArraySlice<UInt8>,
        body: ArraySlice<UInt8>
    ) throws(CeleryProtocolError) {
        guard let type = UTF8Text.validating(Array(contentType)), let encoding = UTF8Text.validating(Array(contentEncoding))
        else {
            throw Self.failure("the signed body's content type or encoding is not UTF-8")
        }
        self.init(signer: signer, signature: signature, contentType: type, contentEncoding: encoding, body: Array(body))
    }

    private static func failure(_ reason: String) -> CeleryProtocolError {
        CeleryProtocolError(code: .invalidSignature, message: "Unable to deserialize: \(reason)")
    }

    /// The text Celery's `auth` serializer writes for these fields (`SecureSerializer._pack`) in `layout`.
    public func packed(_ layout: Layout = .celery55) -> [UInt8] {
        var raw = layout == .celery55 ? Base64.encode(signer) : signer
        raw += Self.separator
        raw += layout == .celery55 ? Base64.encode(signature) : signature
        raw += Self.separator
        raw += Array(contentType.utf8)
        raw += Self.separator
        raw += Array(contentEncoding.utf8)
        raw += Self.separator
        raw += body
        return Base64.encode(raw)
    }

    private static func firstSeparator(in bytes: ArraySlice<UInt8>) -> Int? {
        var index = bytes.startIndex
        while index + 1 < bytes.endIndex {
            if bytes[index] == separator[0], bytes[index + 1] == separator[1] { return index }
            index += 1
        }
        return nil
    }
}
