import CeleryProtocol
import Foundation
import Testing

@testable import CeleryWorker

/// Celery's message signing against messages that Python's `auth` serializer signed (Tests/Fixtures/signed-*, with
/// the key and certificates they were made with).
@Suite("Message signing (Celery's auth serializer)")
struct MessageSigningTests {
    static func text(_ name: String) throws -> String { String(decoding: try fixture(name), as: UTF8.self) }

    /// Signing with the fixtures' signer, trusting `store` (fixture names).
    static func signing(store: [String] = ["signing-certificate.pem"], digest: String = "sha256") throws -> MessageSigning {
        try MessageSigning(
            key: text("signing-key.pem"), certificate: text("signing-certificate.pem"), store: store.map(text), digest: digest)
    }

    static let signedFixtures = [
        "signed-v2-json-edge-values", "signed-v1-json-edge-values", "signed-v2-json-add-zlib",
        "signed-v2-msgpack-edge-values", "signed-v1-msgpack-edge-values", "signed-v2-msgpack-add-zlib",
        "signed-celery54-v2-json-edge-values", "signed-celery54-v1-json-edge-values", "signed-celery54-v2-json-add-zlib",
    ]

    @Test("every message Python signed verifies, and reads as the worker reads it", arguments: signedFixtures)
    func pythonSigned(name: String) throws {
        var configuration = WorkerConfiguration(acceptContent: [])
        configuration.messageSigning = try Self.signing()
        let envelope = try KombuEnvelope(decoding: try fixture("\(name).message.json"))
        #expect(envelope.contentType == SignedBody.contentType)
        let message = try configuration.taskMessage(envelope)
        let expected = try CeleryJSON.decode(try fixture("\(name).expected.json"))
        #expect(message.id == expected["id"]?.stringValue)
        #expect(message.name == expected["name"]?.stringValue)
        #expect(message.protocolVersion == expected["protocol"]?.intValue)
        #expect(message.contentType == (name.contains("msgpack") ? .msgpack : .json))
        if name.hasSuffix("add-zlib") { #expect(message.args == [2, 3]) } else { #expect(message.args.count == 21) }
    }

    @Test("the signer's id is Celery's: the issuer's values, then the serial number")
    func signerID() throws {
        let envelope = try KombuEnvelope(decoding: try fixture("signed-v2-json-add-zlib.message.json"))
        let signed = try SignedBody(unpacking: envelope.body)
        #expect(try Self.signing().signerID == String(decoding: signed.signer, as: UTF8.self))
    }

    @Test(
        "a message the worker seals opens again, with its content type back",
        arguments: [CeleryContentType.json, .msgpack], SignedBody.Layout.allCases)
    func roundTrip(serializer: CeleryContentType, layout: SignedBody.Layout) throws {
        let signing = try MessageSigning(
            key: Self.text("signing-key.pem"), certificate: Self.text("signing-certificate.pem"),
            store: [Self.text("signing-certificate.pem")], digest: "SHA512", layout: layout)
        let original = KombuEnvelope(
            body: try serializer.encode([[1, 2], [:], [:]]), contentType: serializer.rawValue,
            contentEncoding: serializer.contentEncoding, headers: ["id": "abc", "task": "tasks.add"], properties: [:])
        let sealed = try signing.seal(original)
        #expect(sealed.contentType == "application/data")
        #expect(sealed.contentEncoding == "utf-8")
        #expect(sealed.body != original.body)
        let signed = try SignedBody(unpacking: sealed.body) { _ in 256 }
        #expect(signed.packed(layout) == sealed.body)
        #expect(String(decoding: signed.signer, as: UTF8.self) == signing.signerID)
        let opened = try signing.open(sealed)
        #expect(opened.body == original.body)
        #expect(opened.contentType == serializer.rawValue)
        #expect(opened.contentEncoding == serializer.contentEncoding)
        // Through the encoded message, as it goes into Redis.
        #expect(try signing.open(try KombuEnvelope(decoding: sealed.encoded())).body == original.body)
    }

    @Test("a message signed by a certificate the store lacks, or changed after signing, is refused")
    func refused() throws {
        let envelope = try KombuEnvelope(decoding: try fixture("signed-v2-json-add-zlib.message.json"))
        let stranger = try Self.signing(store: ["signing-other-certificate.pem"])
        let unknown = #expect(throws: CeleryProtocolError.self) { try stranger.open(envelope) }
        #expect(unknown?.code == .invalidSignature)
        #expect(unknown?.message.contains("Unknown certificate: b'DE Swift Celery Fixtures signer ") == true)
        #expect(unknown?.taskID == envelope.headers["id"]?.stringValue)

        var signed = try SignedBody(unpacking: envelope.body)
        signed.body = Array(String(decoding: signed.body, as: UTF8.self).replacingOccurrences(of: "[2, 3]", with: "[2, 4]").utf8)
        var tampered = envelope
        tampered.body = signed.packed()
        let bad = #expect(throws: CeleryProtocolError.self) { try Self.signing().open(tampered) }
        #expect(bad?.message == #"Unable to deserialize: SecurityError('Bad signature: InvalidSignature()')"#)

        // A signature made with another digest does not verify either.
        let sha512 = try Self.signing(digest: "sha512")
        #expect(throws: CeleryProtocolError.self) { try sha512.open(envelope) }
    }

    @Test("an unsigned message is not accepted when accept_content is [auth]")
    func unsigned() throws {
        var configuration = WorkerConfiguration(acceptContent: [])
        configuration.messageSigning = try Self.signing()
        let envelope = try KombuEnvelope(decoding: try fixture("v2-json-add.message.json"))
        let error = #expect(throws: CeleryProtocolError.self) { try configuration.taskMessage(envelope) }
        #expect(error?.code == .unsupportedContentType)
    }

    @Test("the store refuses an expired certificate and one named twice; keys and digests are checked")
    func loading() throws {
        let expired = #expect(throws: CeleryWorkerError.self) {
            try Self.signing(store: ["signing-certificate.pem", "signing-expired-certificate.pem"])
        }
        #expect(expired?.message.hasPrefix("Expired certificate: 'DE Swift Celery Fixtures expired ") == true)
        let twice = #expect(throws: CeleryWorkerError.self) {
            try Self.signing(store: ["signing-certificate.pem", "signing-certificate.pem"])
        }
        #expect(twice?.message.hasPrefix("Duplicate certificate: ") == true)
        let digest = #expect(throws: CeleryWorkerError.self) { try Self.signing(digest: "sha257") }
        #expect(digest?.message.hasPrefix("security_digest 'sha257' is not one of ") == true)
        let key = #expect(throws: CeleryWorkerError.self) {
            try MessageSigning(key: Self.text("signing-certificate.pem"), certificate: Self.text("signing-certificate.pem"), store: [])
        }
        #expect(key?.message.hasPrefix("Invalid private key: ") == true)
        let certificate = #expect(throws: CeleryWorkerError.self) {
            try MessageSigning(key: Self.text("signing-key.pem"), certificate: Self.text("signing-key.pem"), store: [])
        }
        #expect(certificate?.message.hasPrefix("Invalid certificate: ") == true)
    }

    @Test("settings: auth in task_serializer and accept_content with the security_* files, as setup_security checks them")
    func settings() throws {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures").path
        func load(_ yaml: String) throws(CeleryWorkerError) -> CelerySettings {
            try CelerySettings.parse(yaml, source: "test")
        }
        let files = """
            security_key: \(directory)/signing-key.pem
            security_certificate: \(directory)/signing-certificate.pem
            security_cert_store: \(directory)/signing-c*.pem
            security_digest: sha256
            """
        let settings = try load("task_serializer: auth\naccept_content: [auth]\n" + files)
        #expect(settings.taskSerializer == nil)
        #expect(settings.acceptContent == [])
        #expect(settings.warnings.isEmpty)
        let signing = try #require(try MessageSigning(settings: settings.security))
        #expect(signing.signerID.hasPrefix("DE Swift Celery Fixtures signer "))
        #expect(MessageSigning.storeFiles("\(directory)/signing-c*.pem") == ["\(directory)/signing-certificate.pem"])

        #expect(signing.layout == .celery55)
        let older = try load("task_serializer: auth\naccept_content: [auth]\nswift_security_layout: celery-5.4\n" + files)
        #expect(try MessageSigning(settings: older.security)?.layout == .celery54)
        #expect(throws: CeleryWorkerError.self) { try load("swift_security_layout: celery-5.3\n") }
        #expect(try MessageSigning(settings: try load("task_serializer: json\n" + files).security) == nil)
        for partial in ["task_serializer: auth\n", "accept_content: [auth]\n", "task_serializer: auth\naccept_content: [auth, json]\n"] {
            let error = #expect(throws: CeleryWorkerError.self) { try MessageSigning(settings: try load(partial + files).security) }
            #expect(error?.message.contains("task_serializer = 'auth'") == true)
        }
        let missing = #expect(throws: CeleryWorkerError.self) {
            try MessageSigning(settings: try load("task_serializer: auth\naccept_content: [application/data]\n").security)
        }
        #expect(missing?.message.contains("security_key, security_certificate and security_cert_store") == true)
        let results = #expect(throws: CeleryWorkerError.self) { try load("result_serializer: auth\n") }
        #expect(results?.message.contains("the worker does not sign results") == true)
    }
}
