import CeleryProtocol
import Foundation
import Testing

@Suite("Task messages captured from Python Celery")
struct TaskMessageFixtureTests {
    static let accept: Set<CeleryContentType> = [.json, .msgpack]

    /// A message that Celery's `auth` serializer signed with the body it signed in place, read here without checking
    /// the signature (the worker's MessageSigning tests check it); any other message as it is.
    static func unsigned(_ envelope: KombuEnvelope) throws -> KombuEnvelope {
        guard envelope.contentType == SignedBody.contentType else { return envelope }
        // The fixtures' signing key has 2048 bits: Celery 5.4's layout needs its signatures' length.
        let signed = try SignedBody(unpacking: envelope.body) { _ in 256 }
        var unsigned = envelope
        unsigned.body = signed.body
        unsigned.contentType = signed.contentType
        unsigned.contentEncoding = signed.contentEncoding
        return unsigned
    }

    @Test("every captured message decodes to what a Python worker reads", arguments: Fixtures.names(suffix: ".message.json"))
    func decodesLikePython(name: String) throws {
        let raw = try Fixtures.bytes("\(name).message.json")
        let expected = try Fixtures.json("\(name).expected.json")
        let contentType = try KombuEnvelope(decoding: raw).contentType
        let envelope = try Self.unsigned(KombuEnvelope(decoding: raw))
        let message = try CeleryTaskMessage(envelope: envelope, accept: Self.accept)

        #expect(contentType == expected["content_type"]?.stringValue)
        if contentType != SignedBody.contentType { #expect(message.contentType.rawValue == contentType) }
        #expect(message.protocolVersion == expected["protocol"]?.intValue)
        #expect(message.id == expected["id"]?.stringValue)
        #expect(message.name == expected["name"]?.stringValue)
        #expect(typed(.array(message.args)) == expected["args"])
        #expect(typed(.object(message.kwargs)) == expected["kwargs"])
        #expect(typed(message.embed.value) == expected["embed"])
        #expect(envelope.deliveryTag == expected["delivery_tag"]?.stringValue)
        #expect(envelope.deliveryInfo.exchange == expected["exchange"]?.stringValue)
        #expect(envelope.deliveryInfo.routingKey == expected["routing_key"]?.stringValue)
        #expect(envelope.deliveryInfo.priority == expected["priority"]?.intValue)
        if message.protocolVersion == 2 {
            // Every header Python sent is kept, in order, with its value.
            #expect(CeleryValue.object(message.headers) == expected["headers"])
        }
    }

    @Test("headers of a message with every option")
    func optionsHeaders() throws {
        for serializer in ["json", "msgpack"] {
            let envelope = try KombuEnvelope(decoding: try Fixtures.bytes("v2-\(serializer)-options.message.json"))
            let message = try CeleryTaskMessage(envelope: envelope, accept: Self.accept)
            #expect(message.retries == 2)
            #expect(message.shadow == "shadow-name")
            #expect(message.timeLimit.hard == 10)
            #expect(message.timeLimit.soft == 5)
            #expect(message.ignoreResult == false)
            #expect(message.headers["x-custom"] == "v")
            #expect(message.eta.flatMap(CeleryTimestamp.parse) != nil)
            #expect(message.expires.flatMap(CeleryTimestamp.parse) != nil)
            #expect(message.embed.callbacks.arrayValue?.first?["task"] == "tasks.add")
            #expect(message.embed.errbacks.arrayValue?.first?["immutable"] == true)
            #expect(envelope.deliveryInfo.priority == 5)
            #expect(message.argsRepr == "['options']")
        }
    }

    @Test("send_task leaves ignore_result null and a naive eta parses as UTC")
    func sendTask() throws {
        let envelope = try KombuEnvelope(decoding: try Fixtures.bytes("v2-json-send-task-naive-eta.message.json"))
        let message = try CeleryTaskMessage(envelope: envelope, accept: Self.accept)
        #expect(message.ignoreResult == nil)
        #expect(message.eta == "2030-01-01T12:00:00")
        #expect(CeleryTimestamp.parse("2030-01-01T12:00:00") == 1_893_499_200)
    }

    @Test("a protocol v1 message gets the headers Celery builds for it")
    func v1Headers() throws {
        let envelope = try KombuEnvelope(decoding: try Fixtures.bytes("v1-json-add.message.json"))
        let message = try CeleryTaskMessage(envelope: envelope, accept: Self.accept)
        #expect(message.protocolVersion == 1)
        #expect(message.args == [5, 6])
        #expect(message.retries == 0)
        #expect(message.rootID == nil)
        #expect(message.eta != nil)
        #expect(message.headers["utc"] == true)
        #expect(message.headers["timelimit"] == [.null, .null])
    }

    @Test("the chain step carries the rest of the chain reversed")
    func chainEmbed() throws {
        let envelope = try KombuEnvelope(decoding: try Fixtures.bytes("v2-json-chain.message.json"))
        let message = try CeleryTaskMessage(envelope: envelope, accept: Self.accept)
        let chain = try #require(message.embed.chain.arrayValue)
        #expect(chain.count == 2)
        #expect(chain.last?["task"] == "tasks.add")
        #expect(chain.first?["task"] == "tasks.echo")
    }

    @Test("the msgpack seed body matches the bytes the fact sheet documents for an empty call")
    func msgpackSeedBody() throws {
        let envelope = try KombuEnvelope(decoding: try Fixtures.bytes("v2-msgpack-seed-email.message.json"))
        #expect(envelope.contentType == "application/x-msgpack")
        #expect(envelope.contentEncoding == "binary")
        let value = try CeleryMsgpack.decode(envelope.body)
        #expect(try CeleryMsgpack.encode(value) == envelope.body)
    }

    @Test("re-encoding a body gives Python's exact bytes", arguments: Fixtures.names(suffix: ".message.json"))
    func jsonBodyRoundTrip(name: String) throws {
        let envelope = try Self.unsigned(KombuEnvelope(decoding: try Fixtures.bytes("\(name).message.json")))
        let body = try CeleryContentType(rawValue: envelope.contentType).map { try $0.decode(envelope.body) }
        let value = try #require(body)
        let reencoded = try #require(CeleryContentType(rawValue: envelope.contentType)).encode(value)
        #expect(reencoded == envelope.body)
    }

    @Test("the whole envelope re-encodes to the bytes kombu pushed", arguments: Fixtures.names(suffix: ".message.json"))
    func envelopeRoundTrip(name: String) throws {
        let raw = try Fixtures.bytes("\(name).message.json")
        #expect(CeleryJSON.encode(try CeleryJSON.decode(raw)) == raw)
        #expect(try KombuEnvelope(decoding: raw).encoded() == raw)
    }
}

@Suite("Signed bodies (Celery's auth serializer)")
struct SignedBodyTests {
    @Test("a body packs and unpacks as SecureSerializer's _pack and _unpack, separator bytes in the body included")
    func roundTrip() throws {
        let body = SignedBody(
            signer: Array("DE Org signer 1234".utf8), signature: [0, 1, 2, 255], contentType: "application/x-msgpack",
            contentEncoding: "binary", body: [0x93, 0x00, 0x01, 0x00, 0x01, 0xC0])
        #expect(try SignedBody(unpacking: body.packed()) == body)
    }

    @Test("Python's text of a signed message unpacks to its fields")
    func python() throws {
        let envelope = try KombuEnvelope(decoding: try Fixtures.bytes("signed-v2-json-add-zlib.message.json"))
        let signed = try SignedBody(unpacking: envelope.body)
        #expect(String(decoding: signed.signer, as: UTF8.self).hasPrefix("DE Swift Celery Fixtures signer "))
        #expect(signed.signature.count == 256)
        #expect(signed.contentType == "application/json")
        #expect(signed.contentEncoding == "utf-8")
        #expect(try CeleryJSON.decode(signed.body).arrayValue?.first == [2, 3])
        // What Python packs, byte for byte, from the same fields.
        #expect(signed.packed() == envelope.body)
    }

    @Test("Celery 5.4's layout (the signer's id and the signature as they are) unpacks and packs as Celery 5.3 wrote it")
    func celery54() throws {
        let envelope = try KombuEnvelope(decoding: try Fixtures.bytes("signed-celery54-v2-json-add-zlib.message.json"))
        var asked: [UInt8] = []
        let signed = try SignedBody(unpacking: envelope.body) { signer in
            asked = Array(signer)
            return 256
        }
        #expect(asked == signed.signer)
        #expect(String(decoding: signed.signer, as: UTF8.self).hasPrefix("DE Swift Celery Fixtures signer "))
        #expect(signed.signature.count == 256)
        #expect(signed.contentType == "application/json")
        #expect(try CeleryJSON.decode(signed.body).arrayValue?.first == [2, 3])
        #expect(signed.packed(.celery54) == envelope.body)
        // Without the signer's key size it cannot be read.
        #expect(throws: CeleryProtocolError.self) { try SignedBody(unpacking: envelope.body) }
    }

    @Test("text that is not base64, or has fewer than five fields, is refused as a signature error")
    func malformed() {
        for text in ["not base64!", Data("a\u{0}\u{1}b\u{0}\u{1}c".utf8).base64EncodedString()] {
            let error = #expect(throws: CeleryProtocolError.self) { try SignedBody(unpacking: Array(text.utf8)) }
            #expect(error?.code == .invalidSignature)
        }
    }
}
