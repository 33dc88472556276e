import CeleryProtocol
import Testing

/// Golden messages and results damaged at random, the way a broken producer, a truncated write or a hostile client
/// could: every decoder on the worker's path must refuse them with an error (the worker then rejects the message or
/// fails the task, and serves on) rather than trap, which would end the worker and, with acks late, bring the same
/// message back to end the next one. What does decode must encode back to the same bytes.
@Suite("Damaged messages and results: refused with an error, never a crash")
struct MutationTests {
    /// A fixed seed: a failure names the fixture and the mutant's number, and reproduces.
    struct Mutator {
        var state: UInt64

        mutating func next() -> UInt64 {
            // SplitMix64.
            state &+= 0x9E37_79B9_7F4A_7C15
            var mixed = state
            mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
            mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
            return mixed ^ (mixed >> 31)
        }

        mutating func below(_ bound: Int) -> Int { bound <= 0 ? 0 : Int(next() % UInt64(bound)) }

        /// Bytes that steer a JSON or msgpack reader somewhere else: quotes, escapes, brackets, digits, signs,
        /// UTF-8 lead and continuation bytes, msgpack's type bytes for maps, arrays, strings, binaries and numbers.
        static let interesting: [UInt8] = [
            0x00, 0x22, 0x5C, 0x7B, 0x7D, 0x5B, 0x5D, 0x3A, 0x2C, 0x30, 0x39, 0x2D, 0x2E, 0x65, 0x75, 0x80, 0xBF, 0xC0,
            0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xF0, 0xF4, 0xF5, 0xFF, 0x90, 0x9F, 0x8F, 0xDC, 0xDD, 0xDE, 0xDF, 0xD9, 0xDA,
            0xDB, 0xC4, 0xC5, 0xC6, 0xCB, 0xCF, 0xD3, 0xC7, 0xD4, 0xA0, 0xBF,
        ]

        /// One to three random edits of `bytes`.
        mutating func mutate(_ bytes: [UInt8]) -> [UInt8] {
            var bytes = bytes
            for _ in 0...below(3) {
                let at = below(bytes.count + 1)
                switch below(7) {
                case 0 where !bytes.isEmpty:  // flip a bit
                    let index = min(at, bytes.count - 1)
                    bytes[index] ^= UInt8(1 << below(8))
                case 1 where !bytes.isEmpty:  // an interesting byte in place of one
                    bytes[min(at, bytes.count - 1)] = Self.interesting[below(Self.interesting.count)]
                case 2:  // truncated
                    bytes.removeSubrange(at...)
                case 3:  // a run removed
                    bytes.removeSubrange(at..<min(bytes.count, at + 1 + below(16)))
                case 4 where !bytes.isEmpty:  // a run copied elsewhere
                    let from = below(bytes.count)
                    let run = Array(bytes[from..<min(bytes.count, from + 1 + below(32))])
                    bytes.insert(contentsOf: run, at: below(bytes.count + 1))
                case 5:  // a long number, a long string of digits
                    bytes.insert(contentsOf: Array(String(repeating: "9", count: 1 + below(40)).utf8), at: at)
                default:  // random bytes
                    bytes.insert(contentsOf: (0..<(1 + below(8))).map { _ in UInt8(truncatingIfNeeded: next()) }, at: at)
                }
            }
            return bytes
        }
    }

    static let mutantsPerFixture = 40

    @Test("task messages: the envelope, the body in every content type, the headers the worker reads")
    func taskMessages() async throws {
        let names = Fixtures.names(suffix: ".message.json")
        #expect(names.count >= 30)
        var decoded = 0
        for (number, name) in names.enumerated() {
            let original = try Fixtures.bytes("\(name).message.json")
            var mutator = Mutator(state: UInt64(number))
            for mutant in 0..<Self.mutantsPerFixture {
                // A thread of the cooperative pool is lent now and then to the suites that run meanwhile, some of
                // which time what they wait for.
                if mutant % 25 == 0 { await Task.yield() }
                let bytes = mutator.mutate(original)
                _ = KombuEnvelope.deliveryFields(of: bytes)
                checkRoundTrip(bytes, "\(name) #\(mutant)")
                guard let envelope = try? KombuEnvelope(decoding: bytes) else { continue }
                guard let message = try? CeleryTaskMessage(envelope: envelope, accept: Set(CeleryContentType.allCases)) else {
                    continue
                }
                decoded += 1
                read(message)
            }
        }
        // Most mutants of a message still decode (an edit inside a string, a digit): the paths after decoding were
        // reached many times.
        #expect(decoded > names.count * Self.mutantsPerFixture / 30)
    }

    @Test("stored results: JSON, msgpack and Celery 5.7's compressed form")
    func storedResults() async throws {
        var cases: [(name: String, serializer: CeleryContentType, mutants: Int)] = []
        cases += Fixtures.names(suffix: ".result.json").map { ("\($0).result.json", .json, Self.mutantsPerFixture) }
        cases += Fixtures.names(suffix: ".result.msgpack").map { ("\($0).result.msgpack", .msgpack, Self.mutantsPerFixture) }
        // Fewer of these: a debug build takes milliseconds to fill the decompressor's output buffer for each.
        cases += Fixtures.names(suffix: ".compressed.bin").map {
            ("\($0).compressed.bin", $0.contains("msgpack") ? .msgpack : .json, Self.mutantsPerFixture / 4)
        }
        #expect(cases.count >= 20)
        for (number, (name, serializer, mutants)) in cases.enumerated() {
            let original = try Fixtures.bytes(name)
            var mutator = Mutator(state: 1_000 + UInt64(number))
            for mutant in 0..<mutants {
                if mutant % 25 == 0 { await Task.yield() }
                let bytes = mutator.mutate(original)
                _ = CeleryResultDocument.storedStatus(bytes, serializer: serializer)
                if serializer == .msgpack {
                    checkMsgpackRoundTrip(bytes, "\(name) #\(mutant)")
                } else {
                    checkRoundTrip(bytes, "\(name) #\(mutant)")
                }
            }
        }
    }

    @Test("nesting deeper than the readers allow is refused, in JSON and in msgpack")
    func deepNesting() {
        for depth in [600, 100_000] {
            let json = Array(repeating: UInt8(ascii: "["), count: depth) + Array(repeating: UInt8(ascii: "]"), count: depth)
            #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode(json) }
            let msgpack = Array(repeating: UInt8(0x91), count: depth) + [0xC0]
            #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.decode(msgpack) }
        }
    }

    /// Reads every part of a decoded message that the worker reads before and after running it.
    private func read(_ message: CeleryTaskMessage) {
        _ = (message.id, message.name, message.args, message.kwargs, message.headers, message.protocolVersion)
        _ = (message.retries, message.rootID, message.parentID, message.groupID, message.groupIndex)
        _ = (message.ignoreResult, message.shadow, message.timeLimit, message.argsRepr, message.kwargsRepr)
        _ = (message.eventHeaders, message.hasCallbacksOrChain, message.isChordPart)
        if let eta = message.eta { _ = CeleryTimestamp.parse(eta) }
        if let expires = message.expires { _ = CeleryTimestamp.parse(expires) }
        let embed = message.embed
        for list in [embed.callbacks, embed.errbacks, embed.chain] { _ = Signature.list(list) }
        _ = Signature(embed.chord)
    }

    /// JSON that decodes encodes to bytes that decode to the same value (compared as their encoding, so NaN
    /// compares equal to itself).
    private func checkRoundTrip(_ bytes: [UInt8], _ label: String) {
        guard let value = try? CeleryJSON.decode(bytes) else { return }
        let encoded = CeleryJSON.encode(value)
        let again = try? CeleryJSON.decode(encoded)
        #expect(again.map(CeleryJSON.encode) == encoded, "\(label)")
    }

    private func checkMsgpackRoundTrip(_ bytes: [UInt8], _ label: String) {
        guard let value = try? CeleryMsgpack.decode(bytes), let encoded = try? CeleryMsgpack.encode(value) else { return }
        let again = try? CeleryMsgpack.decode(encoded)
        #expect(again.map(CeleryJSON.encode) == CeleryJSON.encode(value), "\(label)")
    }
}
