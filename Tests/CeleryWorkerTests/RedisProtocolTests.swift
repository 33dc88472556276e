import CeleryProtocol
import Foundation
import Testing

@testable import CeleryWorker

@Suite("Commands in Redis's protocol")
struct RedisProtocolTests {
    @Test("a command is written as RESP: the argument count, then each argument's length and bytes, lines ending in CRLF")
    func resp() {
        #expect(RedisConnection.resp(RedisCommand("PING")) == Array("*1\r\n$4\r\nPING\r\n".utf8))
        #expect(RedisConnection.resp(RedisCommand("SET", "key", "")) == Array("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$0\r\n\r\n".utf8))
        let binary = RedisCommand([Array("EVALSHA".utf8), Array("ab".utf8), [], [0x0D, 0x0A, 0x00, 0xFF]])
        #expect(
            RedisConnection.resp(binary)
                == Array("*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$0\r\n\r\n$4\r\n".utf8) + [0x0D, 0x0A, 0x00, 0xFF, 0x0D, 0x0A])
        let long = [UInt8](repeating: 0x61, count: 12_345)
        let pushed = RedisConnection.resp(RedisCommand([Array("LPUSH".utf8), Array("celery".utf8), long]))
        #expect(pushed == Array("*3\r\n$5\r\nLPUSH\r\n$6\r\ncelery\r\n$12345\r\n".utf8) + long + [0x0D, 0x0A])
        let many = RedisCommand((0..<12).map { Array("a\($0)".utf8) })
        let expected = "*12\r\n" + (0..<12).map { "$\($0 < 10 ? 2 : 3)\r\na\($0)\r\n" }.joined()
        #expect(RedisConnection.resp(many) == Array(expected.utf8))
    }

    @Test("arguments written straight in RESP are the bytes of the same command's arguments")
    func writtenArguments() throws {
        let document = CeleryResultDocument(taskID: "t-1", status: .success, result: ["é", 1], traceback: nil, children: [], dateDone: nil)
        let long = [UInt8](repeating: 0x61, count: 12_345)
        var written = RESPArguments(capacity: 0)
        written.append("unacked")
        written.append("")
        written.append("pre_", "celery-task-meta-", "t-1")
        written.append(0)
        written.append(-12)
        written.append(1_234_567_890)
        written.append(Int.min)
        written.append(Int.max)
        written.append(1.5)
        written.append([0x0D, 0x0A, 0x00, 0xFF])
        written.append(long)
        try written.append { try document.encode(as: .json, into: &$0) }
        written.append { _ in }
        try written.append { try document.encode(as: .msgpack, into: &$0) }
        let arguments: [[UInt8]] = [
            Array("unacked".utf8), [], Array("pre_celery-task-meta-t-1".utf8), Array("0".utf8), Array("-12".utf8),
            Array("1234567890".utf8), Array(String(Int.min).utf8), Array(String(Int.max).utf8), Array("1.5".utf8), [0x0D, 0x0A, 0x00, 0xFF], long,
            try document.encoded(as: .json), [],
            try document.encoded(as: .msgpack),
        ]
        #expect(written.count == arguments.count)
        let command = RedisConnection.resp(RedisCommand(arguments))
        #expect(Array("*\(arguments.count)\r\n".utf8) + written.bytes == command)
    }
}

@Suite("Replies in Redis's protocol")
struct RESPReaderTests {
    private func read(_ text: [UInt8], at start: Int = 0) -> RESPReader.Outcome {
        text.withUnsafeBytes { RESPReader.read($0, at: start) }
    }

    private func read(_ text: String, at start: Int = 0) -> RESPReader.Outcome {
        read(Array(text.utf8), at: start)
    }

    @Test("each kind of reply is read whole, with where the next one starts")
    func kinds() {
        #expect(read("+OK\r\n") == .reply(.status("OK"), next: 5))
        #expect(read("+a\rb\r\n") == .reply(.status("a\rb"), next: 6))
        #expect(read("-ERR wrong\r\n") == .reply(.error("ERR wrong"), next: 12))
        #expect(read(":-12\r\n") == .reply(.integer(-12), next: 6))
        #expect(read(":9223372036854775807\r\n") == .reply(.integer(.max), next: 22))
        #expect(read("$3\r\nabc\r\n") == .reply(.string(Array("abc".utf8)), next: 9))
        #expect(read("$0\r\n\r\n") == .reply(.string([]), next: 6))
        #expect(read("$-1\r\n") == .reply(.null, next: 5))
        #expect(read("*-1\r\n") == .reply(.null, next: 5))
        #expect(read("*0\r\n") == .reply(.array([]), next: 4))
        let binary: [UInt8] = Array("*2\r\n*2\r\n:1\r\n$-1\r\n$4\r\n".utf8) + [0x0D, 0x0A, 0x00, 0xFF] + Array("\r\n".utf8)
        #expect(read(binary) == .reply(.array([.array([.integer(1), .null]), .string([0x0D, 0x0A, 0x00, 0xFF])]), next: binary.count))
    }

    @Test("replies back to back are read one at a time from where the last one ended")
    func backToBack() {
        let text = "+QUEUED\r\n*2\r\n:1\r\n:0\r\n"
        #expect(read(text) == .reply(.status("QUEUED"), next: 9))
        #expect(read(text, at: 9) == .reply(.array([.integer(1), .integer(0)]), next: text.utf8.count))
        #expect(read(text, at: text.utf8.count) == .incomplete)
    }

    @Test("every part of a reply short of its end is incomplete, not an error")
    func incomplete() {
        let whole = Array("*3\r\n$5\r\nhello\r\n:42\r\n*1\r\n+OK\r\n".utf8)
        for length in 0..<whole.count {
            #expect(read(Array(whole.prefix(length))) == .incomplete, "\(length) bytes")
        }
        #expect(read(whole) == .reply(.array([.string(Array("hello".utf8)), .integer(42), .array([.status("OK")])]), next: whole.count))
    }

    @Test("bytes that are not a reply are an error that says what is wrong")
    func invalid() {
        for text in ["?x\r\n", ":1x\r\n", ":\r\n", ":99999999999999999999\r\n", "$abc\r\n", "$-2\r\n", "$3\r\nabcXY", "*x\r\n"] {
            guard case .invalid(let problem) = read(text) else {
                Issue.record("\(String(reflecting: text)) was not refused")
                continue
            }
            #expect(!problem.isEmpty)
        }
        #expect(read("?x\r\n") == .invalid(#"Protocol error, got "?" as reply type byte"#))
        let deep = String(repeating: "*1\r\n", count: 8) + ":1\r\n"
        #expect(read(deep) == .invalid("No support for nested multi bulk replies with depth > 7"))
        let deepest = String(repeating: "*1\r\n", count: 7) + ":1\r\n"
        #expect(read(deepest) != .incomplete && read(deepest) != .invalid("No support for nested multi bulk replies with depth > 7"))
    }

    @Test("damaged replies never trap; a reply read from them reads the same with bytes after it, and short of its end is incomplete")
    func damaged() {
        let replies = [
            "+OK\r\n", "-ERR wrong\r\n", ":-12\r\n", "$3\r\nabc\r\n", "$-1\r\n", "*0\r\n",
            "*3\r\n$5\r\nhello\r\n:42\r\n*2\r\n+OK\r\n$-1\r\n", "*2\r\n*2\r\n:1\r\n$0\r\n\r\n*1\r\n*1\r\n*1\r\n:7\r\n",
        ].map { Array($0.utf8) }
        let steering = Array("*$:+-\r\n0123456789".utf8) + [0x00, 0xFF]
        var random = SeededRandom(state: 7)
        func below(_ bound: Int) -> Int { random.below(bound) }
        var whole = 0
        for round in 0..<30_000 {
            var bytes = replies[round % replies.count]
            for _ in 0...below(2) {
                let at = below(bytes.count)
                switch below(4) {
                case 0: bytes[at] = steering[below(steering.count)]
                case 1: bytes.insert(steering[below(steering.count)], at: at)
                case 2: bytes.remove(at: at)
                default: bytes.insert(contentsOf: String(below(1 << 20) - 1000).utf8, at: at)
                }
                if bytes.isEmpty { bytes = [0x2A] }
            }
            guard case .reply(let reply, let next) = read(bytes) else { continue }
            whole += 1
            #expect(next > 0 && next <= bytes.count, "\(bytes)")
            #expect(read(bytes + Array("+more\r\n".utf8)) == .reply(reply, next: next), "\(bytes)")
            #expect(read(Array(bytes.prefix(below(next)))) == .incomplete, "\(bytes)")
        }
        #expect(whole > 3000)
    }
}

/// A one-connection TCP server on loopback that answers whatever it is sent with `replies`, each written on its own
/// after a short pause (so a reply can arrive in pieces), then closes.
private final class ScriptedServer: Sendable {
    let port: Int
    private let listener: Int32

    init(replies: [[UInt8]]) throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                bind(descriptor, generic, length) == 0 && listen(descriptor, 1) == 0
                    && getsockname(descriptor, generic, &length) == 0
            }
        }
        listener = descriptor
        port = Int(UInt16(bigEndian: address.sin_port))
        try #require(bound, "no loopback listener")
        Thread.detachNewThread {
            let client = accept(descriptor, nil, nil)
            guard client >= 0 else { return }
            var request = [UInt8](repeating: 0, count: 4096)
            _ = read(client, &request, request.count)
            for reply in replies {
                usleep(50_000)
                _ = reply.withUnsafeBytes { write(client, $0.baseAddress, $0.count) }
            }
            usleep(200_000)
            close(client)
        }
    }

    deinit { close(listener) }
}

@Suite("Replies read from the socket")
struct RESPSocketTests {
    @Test("a reply that arrives in pieces is read whole")
    func piecewise() throws {
        let server = try ScriptedServer(replies: [Array("*2\r\n$3\r\nab".utf8), Array("c\r\n:7".utf8), Array("\r\n".utf8)])
        let connection = RedisConnection(url: try RedisURL(parsing: "redis://127.0.0.1:\(server.port)"), commandTimeout: .seconds(5))
        let replies = try connection.execute([RedisCommand("PING")])
        #expect(replies == [.array([.string(Array("abc".utf8)), .integer(7)])])
    }

    @Test("bytes that are not Redis's protocol fail the request with a protocol error and close the connection")
    func malformed() throws {
        let failure = try Self.failure(ofPingAnswered: "?bogus\r\n")
        #expect(failure?.code == .connectionLost)
        #expect(failure?.message.contains(#"Protocol error, got "?" as reply type byte"#) == true)
    }

    @Test("Redis's refusal of a connection at maxclients fails the request as a lost connection, in redis-py's words")
    func tooManyClients() throws {
        let failure = try Self.failure(ofPingAnswered: "-ERR max number of clients reached\r\n")
        #expect(failure?.code == .connectionLost)
        #expect(failure?.message.hasSuffix(": max number of clients reached") == true)
    }

    /// The error a `PING` fails with when a server answers it with `reply` and closes: `nil` when it does not fail.
    /// The connection must be closed after it.
    private static func failure(ofPingAnswered reply: String) throws -> CeleryWorkerError? {
        let server = try ScriptedServer(replies: [Array(reply.utf8)])
        let connection = RedisConnection(url: try RedisURL(parsing: "redis://127.0.0.1:\(server.port)"), commandTimeout: .seconds(5))
        defer { #expect(!connection.isOpen) }
        do throws(CeleryWorkerError) {
            _ = try connection.execute([RedisCommand("PING")])
            return nil
        } catch {
            return error
        }
    }
}
