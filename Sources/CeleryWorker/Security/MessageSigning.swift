import COpenSSL
import CeleryProtocol
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// What the configuration file says about Celery's message signing (`app.setup_security()`).
public struct SecuritySettings: Sendable, Equatable {
    /// `task_serializer: auth`: the messages sent (tasks and remote control) are signed.
    public var signsTasks: Bool?
    /// `auth` (or `application/data`) in `accept_content`: signed messages are verified and read.
    public var acceptsSigned: Bool?
    /// Whether `accept_content` names anything besides `auth`.
    public var acceptsUnsigned = false
    /// `security_key`: the file of the private key that signs.
    public var key: String?
    /// `security_key_password`: the passphrase of an encrypted key.
    public var keyPassword: String?
    /// `security_certificate`: the file of the certificate of that key, whose id each signed message names.
    public var certificate: String?
    /// `security_cert_store`: the certificates whose signatures are trusted, a directory or a `glob` pattern.
    public var certificateStore: String?
    /// `security_digest`: the message digest signed, `sha256` by default.
    public var digest: String?
    /// `swift_security_layout`, the worker's own setting: how what it signs is laid out, for workers of Celery 5.5
    /// and later (`celery-5.5`, the default) or of Celery 5.4 and earlier (`celery-5.4`). Both are read.
    public var layout: SignedBody.Layout?

    public init() {}

    /// Whether anything asks for signing (`auth` in `task_serializer` or `accept_content`).
    public var isRequested: Bool { signsTasks == true || acceptsSigned == true }
}

/// Celery's message signing (the `auth` serializer that `app.setup_security()` registers): messages sent are signed
/// with an RSA key, and a signed message is read only when a certificate of the store verifies it.
///
/// As in Celery, a signed body carries the id of the signer's certificate (its issuer and serial number), an
/// RSA-PSS signature (MGF1 over `security_digest`, the longest salt) of the inner body, and that body with its own
/// content type: the one the message was serialized with before it was sealed (the worker's follow-ups and replies
/// keep the serializer of the message they answer, as elsewhere; its own messages are JSON). A certificate of the
/// store that has expired, or an id the store does not hold, fails the message, as does a signature that does not
/// verify.
///
/// `@unchecked Sendable` is sound because the key, the certificates and the digest are OpenSSL objects that `init`
/// makes and nothing changes afterwards: signing and verifying only read them, which OpenSSL 3 allows from several
/// threads at once. They are freed in `deinit`, when no thread can use them.
public final class MessageSigning: @unchecked Sendable {
    private let key: OpaquePointer
    private let signatureSize: Int
    private let certificate: OpaquePointer
    /// The id of ``certificate``, which each signed message names.
    public let signerID: String
    /// The trusted certificates, by id (Celery's `CertStore`).
    private let store: [String: OpaquePointer]
    private let digest: OpaquePointer
    /// How what is signed is laid out (both layouts are read).
    public let layout: SignedBody.Layout

    /// The names that mean signing in `task_serializer` and `accept_content`.
    static func names(_ name: String) -> Bool { name == "auth" || name == SignedBody.contentType }

    /// Celery's `security_digest` names (attributes of `cryptography.hazmat.primitives.hashes`, in any case) with
    /// OpenSSL's names for them.
    static let digests: [String: String] = [
        "SHA1": "sha1", "SHA224": "sha224", "SHA256": "sha256", "SHA384": "sha384", "SHA512": "sha512",
        "SHA512_224": "sha512-224", "SHA512_256": "sha512-256", "SHA3_224": "sha3-224", "SHA3_256": "sha3-256",
        "SHA3_384": "sha3-384", "SHA3_512": "sha3-512", "MD5": "md5", "SM3": "sm3",
    ]

    /// Signing with a key and its certificate (PEM text), trusting the certificates of `store` (PEM text each).
    ///
    /// - Throws: a key or certificate that does not load or is not RSA, an unknown digest, an expired certificate in
    ///   the store, or two certificates of the store with one id (Celery's checks, in its words where it has them).
    public init(
        key keyText: String, password: String? = nil, certificate certificateText: String, store storeTexts: [String],
        digest digestName: String = "sha256", layout: SignedBody.Layout = .celery55
    ) throws(CeleryWorkerError) {
        func failure(_ message: String) -> CeleryWorkerError {
            CeleryWorkerError(code: .invalidConfiguration, message: message)
        }
        guard let openSSLName = Self.digests[digestName.uppercased()] else {
            throw failure(
                "security_digest '\(digestName)' is not one of \(Self.digests.keys.sorted().map { $0.lowercased() }.joined(separator: ", "))")
        }
        let named = TLSContext.withErrorText { copenssl_digest_named(openSSLName, $0, $1) }
        guard let digest = named.result else { throw failure("security_digest '\(digestName)': \(named.error)") }
        let loadedKey = TLSContext.withErrorText { copenssl_key_load(keyText, password, $0, $1) }
        guard let key = loadedKey.result else { throw failure("Invalid private key: \(loadedKey.error)") }
        var certificates: [OpaquePointer] = []
        func freeAll() {
            copenssl_key_free(key)
            certificates.forEach { copenssl_certificate_free($0) }
        }
        var store: [String: OpaquePointer] = [:]
        do throws(CeleryWorkerError) {
            let own = try Self.certificate(certificateText)
            certificates.append(own)
            for text in storeTexts {
                let trusted = try Self.certificate(text)
                certificates.append(trusted)
                let id = Self.id(of: trusted)
                guard !copenssl_certificate_expired(trusted).isTrue else { throw failure("Expired certificate: '\(id)'") }
                guard store.updateValue(trusted, forKey: id) == nil else { throw failure("Duplicate certificate: '\(id)'") }
            }
            self.certificate = own
        } catch {
            freeAll()
            throw error
        }
        self.key = key
        self.signatureSize = copenssl_key_signature_size(key)
        self.signerID = Self.id(of: certificate)
        self.store = store
        self.digest = digest
        self.layout = layout
    }

    /// Signing as the configuration file says (`security_key`, `security_certificate`, `security_cert_store`, with
    /// `security_key_password` and `security_digest`), or `nil` when it asks for none. Celery's `setup_security`
    /// checks come first: signing needs `task_serializer: auth` with `accept_content: [auth]`, and all three files.
    public convenience init?(settings: SecuritySettings) throws(CeleryWorkerError) {
        guard settings.isRequested else { return nil }
        func failure(_ message: String) -> CeleryWorkerError {
            CeleryWorkerError(code: .invalidConfiguration, message: message)
        }
        guard settings.signsTasks == true, settings.acceptsSigned == true, !settings.acceptsUnsigned else {
            throw failure(
                "You have to configure a special task serializer for signing and verifying tasks: task_serializer = 'auth'. "
                    + "You have to accept only tasks which are serialized with 'auth': accept_content = ['auth'].")
        }
        guard let keyFile = settings.key, let certificateFile = settings.certificate, let storePath = settings.certificateStore
        else {
            throw failure("Message signing needs the security_key, security_certificate and security_cert_store settings.")
        }
        let storeFiles = Self.storeFiles(storePath)
        guard !storeFiles.isEmpty else { throw failure("security_cert_store '\(storePath)' names no certificate file") }
        try self.init(
            key: try Self.read(keyFile, "security_key"), password: settings.keyPassword,
            certificate: try Self.read(certificateFile, "security_certificate"),
            store: try storeFiles.map { file throws(CeleryWorkerError) in try Self.read(file, "security_cert_store") },
            digest: settings.digest ?? "sha256", layout: settings.layout ?? .celery55)
    }

    deinit {
        copenssl_key_free(key)
        copenssl_certificate_free(certificate)
        for certificate in store.values { copenssl_certificate_free(certificate) }
    }

    // MARK: Messages

    /// A message as it is published: its body signed, as the `auth` serializer writes it.
    public func seal(_ envelope: KombuEnvelope) throws(CeleryWorkerError) -> KombuEnvelope {
        var sealed = envelope
        sealed.body = try sign(envelope.body, contentType: envelope.contentType, contentEncoding: envelope.contentEncoding)
        sealed.contentType = SignedBody.contentType
        sealed.contentEncoding = SignedBody.contentEncoding
        return sealed
    }

    /// A received message as its signer serialized it: a signed body verified and replaced by the body it signs,
    /// with that body's content type. Any other message is returned as it is, for the accepted content types to
    /// judge.
    public func open(_ envelope: KombuEnvelope) throws(CeleryProtocolError) -> KombuEnvelope {
        guard envelope.contentType == SignedBody.contentType else { return envelope }
        var opened = envelope
        let signed: SignedBody
        do throws(CeleryProtocolError) {
            signed = try verified(envelope.body)
        } catch {
            var located = error
            located.taskID = envelope.headers["id"]?.stringValue
            located.taskName = envelope.headers["task"]?.stringValue
            throw located
        }
        opened.body = signed.body
        opened.contentType = signed.contentType
        opened.contentEncoding = signed.contentEncoding
        return opened
    }

    /// Why a mailbox message (a remote control request or reply, or an event) cannot be read.
    enum MailboxRefusal: Error {
        /// With signing, a message that is not signed where only signed ones are accepted (its content type).
        case unsigned(String)
        /// A signed message whose signature does not verify (why).
        case unverified(String)
        /// A body that is not JSON or msgpack, or does not decode.
        case undecodable
    }

    /// The body of a mailbox message and its serializer, as a Celery mailbox reads it: with `signing`, a signed one
    /// verified first, and with `signedOnly` nothing else (Celery's mailbox accepts `accept_content` alone, which is
    /// `[auth]` when messages are signed).
    static func openedBody(_ envelope: KombuEnvelope, signing: MessageSigning?, signedOnly: Bool)
        -> Result<(body: CeleryValue, serializer: CeleryContentType), MailboxRefusal>
    {
        var opened = envelope
        if let signing {
            if signedOnly, envelope.contentType != SignedBody.contentType { return .failure(.unsigned(envelope.contentType)) }
            do throws(CeleryProtocolError) {
                opened = try signing.open(envelope)
            } catch {
                return .failure(.unverified(error.message))
            }
        }
        guard let serializer = CeleryContentType(rawValue: opened.contentType), let body = try? serializer.decode(opened.body)
        else { return .failure(.undecodable) }
        return .success((body, serializer))
    }

    /// The text of `body` signed (`SecureSerializer.serialize`).
    func sign(_ body: [UInt8], contentType: String, contentEncoding: String) throws(CeleryWorkerError) -> [UInt8] {
        var signature = [UInt8](repeating: 0, count: max(signatureSize, 1))
        let signed = TLSContext.withErrorText { error, size in
            signature.withUnsafeMutableBytes { output in
                body.withUnsafeBytes { input in
                    copenssl_sign(key, digest, input.baseAddress, input.count, output.baseAddress, output.count, error, size)
                }
            }
        }
        guard signed.result > 0 else {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "Unable to serialize: \(signed.error)")
        }
        return SignedBody(
            signer: Array(signerID.utf8), signature: Array(signature.prefix(signed.result)), contentType: contentType,
            contentEncoding: contentEncoding, body: body
        ).packed(layout)
    }

    /// The fields of a signed body whose signature a certificate of the store verifies (`SecureSerializer.deserialize`).
    func verified(_ text: [UInt8]) throws(CeleryProtocolError) -> SignedBody {
        func failure(_ reason: String) -> CeleryProtocolError {
            CeleryProtocolError(code: .invalidSignature, message: "Unable to deserialize: SecurityError(\(PythonRepr.repr(.string(reason))))")
        }
        func certificate(_ signer: some Collection<UInt8>) throws(CeleryProtocolError) -> OpaquePointer {
            guard let certificate = store[String(decoding: signer, as: UTF8.self)] else {
                throw failure("Unknown certificate: \(PythonRepr.repr(.bytes(Array(signer))))")
            }
            return certificate
        }
        let signed = try SignedBody(unpacking: text) { signer throws(CeleryProtocolError) in
            Int(copenssl_certificate_key_bits(try certificate(signer))) >> 3
        }
        let id = String(decoding: signed.signer, as: UTF8.self)
        let certificate = try certificate(signed.signer)
        guard !copenssl_certificate_expired(certificate).isTrue else {
            throw failure("Expired certificate: \(PythonRepr.repr(.string(id)))")
        }
        let verified = TLSContext.withErrorText { error, size in
            signed.signature.withUnsafeBytes { signature in
                signed.body.withUnsafeBytes { body in
                    copenssl_verify(
                        certificate, digest, body.baseAddress, body.count, signature.baseAddress, signature.count, error, size)
                }
            }
        }
        guard verified.result.isTrue else { throw failure("Bad signature: \(verified.error)") }
        return signed
    }

    // MARK: Loading

    private static func certificate(_ text: String) throws(CeleryWorkerError) -> OpaquePointer {
        let loaded = TLSContext.withErrorText { copenssl_certificate_load(text, $0, $1) }
        guard let certificate = loaded.result else {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "Invalid certificate: \(loaded.error)")
        }
        return certificate
    }

    private static func id(of certificate: OpaquePointer) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = copenssl_certificate_id(certificate, &buffer, buffer.count)
        guard length >= 0 else { return "" }
        return String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The files of `security_cert_store`, as Celery's `FSCertStore` finds them: a directory's every entry, or the
    /// files that a `glob` pattern matches, in `glob`'s order.
    static func storeFiles(_ path: String) -> [String] {
        var isDirectory: ObjCBool = false
        let pattern =
            FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
            ? (path.hasSuffix("/") ? path : path + "/") + "*" : path
        var found = glob_t()
        defer { globfree(&found) }
        guard glob(pattern, 0, nil, &found) == 0 else { return [] }
        return (0..<Int(found.gl_pathc)).compactMap { found.gl_pathv[$0].map { String(cString: $0) } }
    }

    private static func read(_ path: String, _ setting: String) throws(CeleryWorkerError) -> String {
        switch FileBytes.read(path) {
        case .success(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .failure(let error): throw CeleryWorkerError(code: .invalidConfiguration, message: "\(setting): cannot read \(path): \(error)")
        }
    }
}

extension Int32 {
    fileprivate var isTrue: Bool { self != 0 }
}
