import CMsgpack
import OrderedCollections

/// msgpack as kombu uses it (`use_bin_type=True` when packing, `raw=False` when unpacking), through msgpack-c.
///
/// Strings are the str family, byte strings `bin`, floats float64. Map keys that are not strings (which Python can
/// send) are turned into their JSON text (`1` → `"1"`), as Python's JSON serializer would do.
public enum CeleryMsgpack {
    /// Decodes exactly one msgpack value; truncated input or trailing bytes are errors.
    public static func decode(_ bytes: some Collection<UInt8>) throws(CeleryProtocolError) -> CeleryValue {
        try unpack(Array(bytes)) { object throws(CeleryProtocolError) in try value(of: object) }
    }

    /// A protocol 2 body `[args, kwargs, embed]` read straight into its parts, as ``decode(_:)`` followed by
    /// Celery's unpacking reads it, without building the outer list or the embed's dictionary; `nil` for anything
    /// else, which the caller then decodes the general way, with its errors.
    static func taskBody(_ bytes: [UInt8]) -> CeleryTaskMessage.BodyParts? {
        let parts = try? unpack(bytes) { object throws(CeleryProtocolError) -> CeleryTaskMessage.BodyParts? in
            guard object.type == MSGPACK_OBJECT_ARRAY, object.via.array.size == 3, let parts = object.via.array.ptr,
                case .array(let args) = try value(of: parts[0]), case .object(let kwargs) = try value(of: parts[1])
            else { return nil }
            guard let embed = try embed(of: parts[2]) else { return nil }
            return (args, kwargs, embed)
        }
        return parts ?? nil
    }

    /// The embed (nil or a map) read into its four members, the others dropped as Celery drops them; `nil` for
    /// anything else and for a key that is not a string (or not UTF-8).
    private static func embed(of object: msgpack_object) throws(CeleryProtocolError) -> CeleryTaskMessage.Embed? {
        var embed = CeleryTaskMessage.Embed()
        if object.type == MSGPACK_OBJECT_NIL { return embed }
        guard object.type == MSGPACK_OBJECT_MAP else { return nil }
        guard let entries = object.via.map.ptr else { return embed }
        for index in 0..<Int(object.via.map.size) {
            let key = entries[index].key
            guard key.type == MSGPACK_OBJECT_STR else { return nil }
            let raw = UnsafeRawBufferPointer(start: key.via.str.ptr, count: Int(key.via.str.size)).bindMemory(to: UInt8.self)
            let field = CeleryTaskMessage.Embed.layout.field(raw)
            // Another key is dropped, but only once it is known to be text, as the general decoding checks it.
            guard field != nil || UTF8Text.validating(raw) != nil else { return nil }
            let value = try value(of: entries[index].val)
            if let field { embed.set(field, value) }
        }
        return embed
    }

    /// Unpacks exactly one msgpack value and hands it to `body` while msgpack-c's memory holds it.
    private static func unpack<Result>(
        _ input: [UInt8], _ body: (msgpack_object) throws(CeleryProtocolError) -> Result
    ) throws(CeleryProtocolError) -> Result {
        var unpacked = msgpack_unpacked()
        msgpack_unpacked_init(&unpacked)
        defer { msgpack_unpacked_destroy(&unpacked) }
        var offset = 0
        let status = input.withUnsafeBytes { raw -> msgpack_unpack_return in
            let base = raw.baseAddress?.assumingMemoryBound(to: CChar.self)
            return msgpack_unpack_next(&unpacked, base, raw.count, &offset)
        }
        switch status {
        case MSGPACK_UNPACK_SUCCESS:
            guard offset == input.count else {
                throw CeleryProtocolError(
                    code: .invalidMsgpack,
                    message: "\(input.count - offset) unexpected bytes after the msgpack value"
                )
            }
            return try body(unpacked.data)
        case MSGPACK_UNPACK_CONTINUE:
            throw CeleryProtocolError(code: .invalidMsgpack, message: "msgpack data is truncated")
        case MSGPACK_UNPACK_NOMEM_ERROR:
            throw CeleryProtocolError(code: .invalidMsgpack, message: "msgpack data too large to unpack")
        default:
            throw CeleryProtocolError(code: .invalidMsgpack, message: "msgpack data is malformed")
        }
    }

    private static func value(of object: msgpack_object) throws(CeleryProtocolError) -> CeleryValue {
        switch object.type {
        case MSGPACK_OBJECT_NIL:
            return .null
        case MSGPACK_OBJECT_BOOLEAN:
            return .bool(object.via.boolean)
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            let number = object.via.u64
            return number <= UInt64(Int64.max) ? .int(Int64(number)) : .uint(number)
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            return .int(object.via.i64)
        case MSGPACK_OBJECT_FLOAT32, MSGPACK_OBJECT_FLOAT64:
            return .double(object.via.f64)
        case MSGPACK_OBJECT_STR:
            let raw = UnsafeRawBufferPointer(start: object.via.str.ptr, count: Int(object.via.str.size))
            guard let text = UTF8Text.validating(raw.bindMemory(to: UInt8.self)) else {
                throw CeleryProtocolError(code: .invalidMsgpack, message: "msgpack string is not valid UTF-8")
            }
            return .string(text)
        case MSGPACK_OBJECT_BIN:
            let raw = UnsafeRawBufferPointer(start: object.via.bin.ptr, count: Int(object.via.bin.size))
            return .bytes(Array(raw))
        case MSGPACK_OBJECT_ARRAY:
            let count = Int(object.via.array.size)
            var elements: [CeleryValue] = []
            elements.reserveCapacity(count)
            if let pointer = object.via.array.ptr {
                for index in 0..<count { elements.append(try value(of: pointer[index])) }
            }
            return .array(elements)
        case MSGPACK_OBJECT_MAP:
            let count = Int(object.via.map.size)
            var entries = OrderedDictionary<String, CeleryValue>(minimumCapacity: count)
            if let pointer = object.via.map.ptr {
                for index in 0..<count {
                    let key = try value(of: pointer[index].key)
                    entries[keyText(key)] = try value(of: pointer[index].val)
                }
            }
            return .object(entries)
        default:
            throw CeleryProtocolError(code: .unsupportedValue, message: "msgpack extension types are not supported")
        }
    }

    private static func keyText(_ key: CeleryValue) -> String {
        if case .string(let text) = key { return text }
        return String(decoding: CeleryJSON.encode(key), as: UTF8.self)
    }

    /// Encodes a value as Python's msgpack packs it with `use_bin_type=True`. An integer beyond 64 bits
    /// (``CeleryValue/bigInt(_:)``) has no msgpack form: it fails as in Python, with `Integer value out of range`.
    public static func encode(_ value: CeleryValue) throws(CeleryProtocolError) -> [UInt8] {
        let sink = PackSink()
        var packer = msgpack_packer()
        withUnsafeMutablePointer(to: &packer) { packerPointer in
            msgpack_packer_init(packerPointer, Unmanaged.passUnretained(sink).toOpaque(), packSinkWrite)
            pack(value, packerPointer, sink)
        }
        guard sink.fits else { throw CeleryProtocolError(code: .unsupportedValue, message: "Integer value out of range") }
        return sink.bytes
    }

    private static func pack(_ value: CeleryValue, _ packer: UnsafeMutablePointer<msgpack_packer>, _ sink: PackSink) {
        switch value {
        case .null:
            msgpack_pack_nil(packer)
        case .bool(let flag):
            _ = flag ? msgpack_pack_true(packer) : msgpack_pack_false(packer)
        case .int(let number):
            msgpack_pack_int64(packer, number)
        case .uint(let number):
            msgpack_pack_uint64(packer, number)
        case .bigInt:
            sink.fits = false
            msgpack_pack_nil(packer)
        case .double(let number):
            msgpack_pack_double(packer, number)
        case .string(let text):
            var text = text
            text.withUTF8 { utf8 in
                msgpack_pack_str(packer, utf8.count)
                msgpack_pack_str_body(packer, utf8.baseAddress, utf8.count)
            }
        case .bytes(let bytes):
            bytes.withUnsafeBytes { raw in
                msgpack_pack_bin(packer, raw.count)
                msgpack_pack_bin_body(packer, raw.baseAddress, raw.count)
            }
        case .array(let elements):
            msgpack_pack_array(packer, elements.count)
            for element in elements { pack(element, packer, sink) }
        case .object(let entries):
            msgpack_pack_map(packer, entries.count)
            for (key, element) in entries {
                pack(.string(key), packer, sink)
                pack(element, packer, sink)
            }
        }
    }
}

/// Collects what msgpack-c's packer writes. Used by one packer on one thread at a time.
private final class PackSink {
    var bytes: [UInt8] = []
    /// False once a value without a msgpack form was met (the bytes are then not used).
    var fits = true
}

private let packSinkWrite: msgpack_packer_write = { data, buffer, length in
    guard let data, let buffer else { return 0 }
    let sink = Unmanaged<PackSink>.fromOpaque(data).takeUnretainedValue()
    buffer.withMemoryRebound(to: UInt8.self, capacity: length) { pointer in
        sink.bytes.append(contentsOf: UnsafeBufferPointer(start: pointer, count: length))
    }
    return 0
}
