import CeleryProtocol
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
    func writtenArguments() {
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
        written.append { document.encode(as: .json, into: &$0) }
        written.append { _ in }
        written.append { document.encode(as: .msgpack, into: &$0) }
        let arguments: [[UInt8]] = [
            Array("unacked".utf8), [], Array("pre_celery-task-meta-t-1".utf8), Array("0".utf8), Array("-12".utf8),
            Array("1234567890".utf8), Array(String(Int.min).utf8), Array(String(Int.max).utf8), Array("1.5".utf8), [0x0D, 0x0A, 0x00, 0xFF], long,
            document.encoded(as: .json), [],
            document.encoded(as: .msgpack),
        ]
        #expect(written.count == arguments.count)
        let command = RedisConnection.resp(RedisCommand(arguments))
        #expect(Array("*\(arguments.count)\r\n".utf8) + written.bytes == command)
    }
}
