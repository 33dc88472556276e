import CeleryProtocol
import Foundation
import Testing

@Suite("Compressed bodies and results, as kombu and Celery 5.7 write them")
struct CompressionTests {
    static let document = Array(#"{"status": "SUCCESS", "result": "我将发送邮件", "traceback": null}"#.utf8)

    @Test("kombu's names and aliases find the method; the others find none")
    func names() {
        for name in ["application/x-gzip", "gzip", "zlib"] { #expect(KombuCompression(name: name) == .zlib) }
        for name in ["application/x-bz2", "bzip2", "bzip"] { #expect(KombuCompression(name: name) == .bzip2) }
        for name in ["application/x-lzma", "lzma", "xz"] { #expect(KombuCompression(name: name) == .lzma) }
        for name in ["application/x-brotli", "brotli"] { #expect(KombuCompression(name: name) == .brotli) }
        for name in ["application/zstd", "zstd", "zstandard"] { #expect(KombuCompression(name: name) == .zstd) }
        for name in ["snappy", "application/x-snappy", "GZIP", ""] {
            #expect(KombuCompression(name: name) == nil)
        }
    }

    @Test("every method gives back what it compressed, empty and large", arguments: KombuCompression.allCases)
    func roundTrip(method: KombuCompression) throws {
        let large = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7919 >> 3) }
        for bytes in [[], Self.document, large] {
            let compressed = method.compress(bytes)
            #expect(try method.decompress(compressed) == bytes)
        }
    }

    @Test("bzip2 and xz read streams written one after another; zlib ignores what follows its stream")
    func concatenated() throws {
        for method in [KombuCompression.bzip2, .lzma] {
            let twice = method.compress(Array("first ".utf8)) + method.compress(Array("second".utf8))
            #expect(try method.decompress(twice) == Array("first second".utf8))
        }
        #expect(try KombuCompression.zlib.decompress(KombuCompression.zlib.compress(Self.document) + [1, 2, 3]) == Self.document)
        let frames = KombuCompression.zstd.compress(Array("first ".utf8)) + KombuCompression.zstd.compress(Array("second".utf8))
        #expect(try KombuCompression.zstd.decompress(frames) == Array("first second".utf8))
        #expect(throws: CeleryProtocolError.self) {
            try KombuCompression.brotli.decompress(KombuCompression.brotli.compress(Self.document) + [1, 2, 3])
        }
    }

    @Test("a corrupt, truncated or foreign body is an error that names the method", arguments: KombuCompression.allCases)
    func corrupt(method: KombuCompression) {
        let compressed = method.compress(Self.document)
        var flipped = compressed
        flipped[flipped.count / 2] ^= 0xFF
        let other = method == .zlib ? KombuCompression.bzip2 : .zlib
        // brotli's and (as Python writes it) zstd's formats carry no checksum: a changed byte may decode to other bytes.
        let checked = method != .brotli && method != .zstd
        let bad = [Array("not compressed".utf8), Array(compressed.dropLast(6)), other.compress(Self.document), []]
        for bad in bad + (checked ? [flipped] : []) {
            #expect {
                _ = try method.decompress(bad)
            } throws: { error in
                let error = error as? CeleryProtocolError
                return error?.code == .invalidCompression && error?.message.contains(method.contentType) == true
            }
        }
    }

    @Test("a body that would grow past the limit is refused, not decompressed", arguments: KombuCompression.allCases)
    func bomb(method: KombuCompression) throws {
        let zeros = [UInt8](repeating: 0, count: 2 << 20)
        let compressed = method.compress(zeros)
        #expect(compressed.count < 100_000)
        #expect(try method.decompress(compressed, limit: 2 << 20) == zeros)
        #expect(throws: CeleryProtocolError.self) { try method.decompress(compressed, limit: 512 << 10) }
    }

    @Test("an envelope with an unknown or bad compression fails with its task id; the body is never decoded")
    func envelopeErrors() throws {
        func envelope(_ compression: String, body: [UInt8]) -> [UInt8] {
            let text = Data(body).base64EncodedString()
            return Array(
                #"{"body": "\#(text)", "headers": {"id": "abc", "task": "t", "compression": \#(compression)}, "properties": {"body_encoding": "base64"}}"#
                    .utf8)
        }
        let cases: [(String, [UInt8], String)] = [
            (#""application/x-snappy""#, KombuCompression.zlib.compress(Self.document), "'application/x-snappy' is not supported"),
            (#""application/x-gzip""#, Self.document, "does not decompress as application/x-gzip"),
            ("5", KombuCompression.zlib.compress(Self.document), "'compression' is not a string"),
        ]
        for (compression, body, message) in cases {
            #expect {
                _ = try KombuEnvelope(decoding: envelope(compression, body: body))
            } throws: { error in
                let error = error as? CeleryProtocolError
                return error?.code == .invalidCompression && error?.taskID == "abc" && error?.taskName == "t"
                    && error?.message.contains(message) == true
            }
        }
        // null, as a Python dict may hold it, means no compression.
        let plain = try KombuEnvelope(decoding: envelope("null", body: Self.document))
        #expect(plain.body == Self.document)
    }

    @Test("a message sent compressed carries kombu's header last and decodes back to its body")
    func taskSend() throws {
        for method in KombuCompression.allCases {
            var send = TaskSend(
                name: "tasks.add", id: "id-1", args: [2, 3], origin: "gen1@host", replyTo: "oid", deliveryTag: "tag")
            send.extraHeaders = ["x-custom": "v"]
            send.compression = method
            #expect(send.headers.keys.last == "compression")
            #expect(send.headers["compression"] == .string(method.contentType))
            let raw = (try send.envelope).encoded()
            let decoded = try KombuEnvelope(decoding: raw)
            #expect(decoded.body == (try send.envelope).body)
            #expect(decoded.encoded() == raw)
            let stored = try CeleryJSON.decode(raw)
            let text = try #require(stored["body"]?.stringValue)
            let body = try #require(Data(base64Encoded: text))
            #expect(try method.decompress(Array(body)) == (try send.envelope).body)
        }
    }

    @Test("a retry is compressed as the worker is configured, whatever the message that came")
    func retry() throws {
        let raw = try Fixtures.bytes("v2-json-add-zlib.message.json")
        let envelope = try KombuEnvelope(decoding: raw)
        let message = try CeleryTaskMessage(envelope: envelope, accept: [.json])
        for method in [nil, KombuCompression.lzma] {
            let retry = try message.retryEnvelope(
                original: envelope, eta: "2030-01-01T00:00:00+00:00", origin: "gen1@host", ignoreResult: false,
                deliveryTag: "tag", compression: method)
            let decoded = try KombuEnvelope(decoding: retry.encoded())
            #expect(decoded.headers["compression"] == method.map { CeleryValue.string($0.contentType) })
            #expect(try CeleryTaskMessage(envelope: decoded, accept: [.json]).args == [2, 3])
        }
    }

    @Test(
        "a result Celery 5.7 stored with result_compression decodes to what Python reads",
        arguments: Fixtures.names(suffix: ".compressed-expected.json"))
    func compressedResult(name: String) throws {
        let expected = try Fixtures.json("\(name).compressed-expected.json")
        let serializer = try #require(CeleryContentType(name: expected["serializer"]?.stringValue ?? ""))
        let stored = try Fixtures.bytes("\(name).compressed.bin")
        #expect(throws: CeleryProtocolError.self) { try serializer.decode(stored) }
        let document = try CeleryResultDocument.decodeStored(stored, serializer: serializer)
        #expect(typed(document["result"] ?? .null) == expected["result"])
        #expect(document["task_id"] == expected["task_id"])
        let status = TaskState(try #require(expected["status"]?.stringValue))
        #expect(CeleryResultDocument.storedStatus(stored, serializer: serializer) == status)
    }

    @Test("a compressed result that names no compression, or one not supported, is an error")
    func compressedResultErrors() {
        let marker = Array("\0celery-compressed\0".utf8)
        for stored in [marker + Array("application/x-gzip".utf8), marker + Array("application/x-snappy\0xyz".utf8)] {
            #expect(throws: CeleryProtocolError.self) { try CeleryResultDocument.decodeStored(stored, serializer: .json) }
        }
        #expect(CeleryResultDocument.storedStatus(marker + Array("snappy\0xyz".utf8), serializer: .json) == nil)
    }
}
