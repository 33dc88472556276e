/// A Lua script with its SHA-1, computed once: `EVALSHA` names scripts by it.
public struct RedisScript: Sendable {
    public let source: String
    public let digest: String

    public init(_ source: String) {
        self.source = source
        self.digest = ScriptDigest.sha1Hex(source)
    }

    /// A Lua function for scripts: `call_many(command, key, list, first, last)` runs `command key list[first]
    /// … list[last]` in as few calls as Lua's stack allows (1 000 arguments each), the same writes as one call per
    /// item (or pair: a chunk holds whole pairs) for fewer calls, each of which costs Redis more than an argument.
    static let callMany = """
        local function call_many(command, key, list, first, last)
            for from = first, last, 1000 do
                redis.call(command, key, unpack(list, from, math.min(last, from + 999)))
            end
        end

        """
}

/// SHA-1 of a Lua script's text, the name Redis gives it for `EVALSHA`. (Not used for anything secret.)
enum ScriptDigest {
    static func sha1Hex(_ text: String) -> String {
        sha1Hex(Array(text.utf8))
    }

    /// SHA-1 of bytes, as Lua's `redis.sha1hex` gives it.
    static func sha1Hex(_ bytes: [UInt8]) -> String {
        var message = bytes
        let bitLength = UInt64(message.count) * 8
        message.append(0x80)
        while message.count % 64 != 56 { message.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { message.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
        var h: [UInt32] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0]
        var w = [UInt32](repeating: 0, count: 80)
        for chunk in stride(from: 0, to: message.count, by: 64) {
            for i in 0..<16 {
                let base = chunk + i * 4
                w[i] =
                    UInt32(message[base]) << 24 | UInt32(message[base + 1]) << 16 | UInt32(message[base + 2]) << 8
                    | UInt32(message[base + 3])
            }
            for i in 16..<80 {
                let value = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]
                w[i] = value << 1 | value >> 31
            }
            var (a, b, c, d, e) = (h[0], h[1], h[2], h[3], h[4])
            for i in 0..<80 {
                let (f, k): (UInt32, UInt32)
                switch i {
                case 0..<20: (f, k) = ((b & c) | (~b & d), 0x5A82_7999)
                case 20..<40: (f, k) = (b ^ c ^ d, 0x6ED9_EBA1)
                case 40..<60: (f, k) = ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC)
                default: (f, k) = (b ^ c ^ d, 0xCA62_C1D6)
                }
                let temp = (a << 5 | a >> 27) &+ f &+ e &+ k &+ w[i]
                (e, d, c, b, a) = (d, c, b << 30 | b >> 2, a, temp)
            }
            h[0] = h[0] &+ a
            h[1] = h[1] &+ b
            h[2] = h[2] &+ c
            h[3] = h[3] &+ d
            h[4] = h[4] &+ e
        }
        return h.map { word in
            let digits = String(word, radix: 16)
            return String(repeating: "0", count: 8 - digits.count) + digits
        }.joined()
    }
}
