import Foundation
import OrderedCollections
import Testing

@testable import CeleryProtocol

@Suite("JSON, msgpack and repr codecs")
struct CodecTests {
    @Test("integers keep their type and range; floats stay floats")
    func numbers() throws {
        #expect(try CeleryJSON.decode("9223372036854775807") == .int(.max))
        #expect(try CeleryJSON.decode("-9223372036854775808") == .int(.min))
        #expect(try CeleryJSON.decode("18446744073709551615") == .uint(.max))
        #expect(try CeleryJSON.decode("1.0") == .double(1.0))
        #expect(try CeleryJSON.decode("1e3") == .double(1000))
        #expect(CeleryJSON.encode(.double(1.0)) == Array("1.0".utf8))
        #expect(CeleryJSON.encode(.double(1e16)) == Array("1e+16".utf8))
        // Python's json.dumps and repr write floats below 1e16 in full; Swift's own form has an exponent from 2^53.
        #expect(CeleryJSON.encode(.double(0x1p53 + 2)) == Array("9007199254740994.0".utf8))
        #expect(CeleryJSON.encode(.double(-0x1p53)) == Array("-9007199254740992.0".utf8))
        #expect(CeleryJSON.encode(.double(9_999_999_999_999_998)) == Array("9999999999999998.0".utf8))
        #expect(PythonRepr.repr(.double(0x1p53)) == "9007199254740992.0")
        #expect(CeleryJSON.encode(.double(.nan)) == Array("NaN".utf8))
        #expect(try CeleryJSON.decode("-Infinity") == .double(-.infinity))
    }

    @Test("integers beyond 64 bits: read, written and shown as Python's int, refused by msgpack as Python's is")
    func bigIntegers() throws {
        let cases: [(text: String, value: CeleryValue)] = [
            ("18446744073709551616", .bigInt(try #require(CeleryBigInt("18446744073709551616")))),
            ("-9223372036854775809", .bigInt(try #require(CeleryBigInt("-9223372036854775809")))),
            ("-18446744073709551615", .bigInt(try #require(CeleryBigInt("-18446744073709551615")))),
            ("1" + String(repeating: "0", count: 4299), .bigInt(try #require(CeleryBigInt("1" + String(repeating: "0", count: 4299))))),
        ]
        for (text, value) in cases {
            #expect(try CeleryJSON.decode(Array(text.utf8)) == value)
            #expect(CeleryJSON.encode(value) == Array(text.utf8))
            #expect(PythonRepr.repr(value) == text)
            #expect(CeleryValue(integerText: text) == value)
            #expect(!value.fitsMsgpack && !CeleryValue.array([value]).fitsMsgpack && !CeleryValue.object(["k": value]).fitsMsgpack)
            #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.encode(["k": [1, value]]) }
            #expect(throws: CeleryProtocolError.self) { try CeleryContentType.msgpack.encode(value) }
            #expect(try CeleryContentType.json.encode([value]) == Array("[\(text)]".utf8))
        }
        #expect(try CeleryJSON.decode("[18446744073709551616, -1]") == [.bigInt(try #require(CeleryBigInt("18446744073709551616"))), -1])
        #expect(cases[1].value.doubleValue == -9_223_372_036_854_775_809.0)
        #expect(CeleryValue.bigInt(try #require(CeleryBigInt("1" + String(repeating: "0", count: 400)))).doubleValue == nil)
        #expect(throws: CeleryValueConversionError.self) { try Int(celeryValue: cases[0].value) }
        #expect(throws: CeleryValueConversionError.self) { try UInt64(celeryValue: cases[0].value) }
        // Within 64 bits a value is never a bigInt; text that is not Python's form of an integer is none.
        #expect(CeleryValue(integerText: "-9223372036854775808") == .int(.min))
        #expect(CeleryValue(integerText: "18446744073709551615") == .uint(.max))
        for text in [
            "18446744073709551615", "-9223372036854775808", "0", "+18446744073709551616", "018446744073709551616",
            "1e30", "", "-", "12a45678901234567890", "1" + String(repeating: "0", count: 4300),
        ] {
            #expect(CeleryBigInt(text) == nil, "\(text)")
        }
        #expect(CeleryValue(integerText: "007") == nil && CeleryValue(integerText: "-0") == nil)
        // Python's int_max_str_digits: 4301 digits are refused with its words; a leading zero stands alone, as in JSON.
        #expect {
            try CeleryJSON.decode(Array(("-1" + String(repeating: "0", count: 4300)).utf8))
        } throws: { error in
            (error as? CeleryProtocolError)?.message
                == "Exceeds the limit (4300 digits) for integer string conversion: value has 4301 digits; use sys.set_int_max_str_digits() to increase the limit"
        }
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode("[01]") }
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode("-012") }
        #expect(try CeleryJSON.decode("[0, -0, 0.5, -0.25e1]") == [0, 0, 0.5, -2.5])
    }

    @Test("strings: escapes, surrogate pairs and ensure_ascii output")
    func strings() throws {
        #expect(try CeleryJSON.decode(#""\ud83d\ude00 \u6211 \n\t\"\\/""#) == .string("😀 我 \n\t\"\\/"))
        #expect(String(decoding: CeleryJSON.encode("😀我\u{7f}\u{1}"), as: UTF8.self) == #""\ud83d\ude00\u6211\u007f\u0001""#)
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode("\"unterminated") }
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode("\"bad \\x escape\"") }
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode([0x22, 0xFF, 0x22]) }
    }

    @Test("a string ends, escapes and fails at every offset of the eight-byte scan as it does byte by byte")
    func stringScanOffsets() throws {
        for length in 0..<20 {
            let plain = String(repeating: "a", count: length)
            #expect(try CeleryJSON.decode("\"\(plain)\"") == .string(plain))
            #expect(try CeleryJSON.decode("\"\(plain)\\n\(plain)\"") == .string(plain + "\n" + plain))
            #expect(try CeleryJSON.decode("\"\(plain)é\(plain)\"") == .string(plain + "é" + plain))
            #expect(try CeleryJSON.decode("\"\(plain)\u{7F} !\(plain)\"") == .string(plain + "\u{7F} !" + plain))
            #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode("\"\(plain)\u{1}\(plain)\"") }
            #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode("\"\(plain)\u{1F}\"") }
            #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode("\"\(plain)") }
            #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode("[\"\(plain)\\") }

            // In an envelope: the body, a header the worker reads, and unread headers (keys and values, plain,
            // escaped, non-ASCII) are what the whole document says.
            let text = """
                {"body": "\(plain)é", "headers": {"id": "\(plain)", "task": "t", "\(plain)k": "\(plain)é\\"", \
                "x\(plain)é": "\(plain)", "y\(plain)": "\(plain)\\u00e9"}}
                """
            let envelope = try KombuEnvelope(decoding: Array(text.utf8))
            let document = try CeleryJSON.decode(text)
            #expect(envelope.body == Array("\(plain)é".utf8))
            #expect(envelope.headers == document["headers"]?.objectValue)
            #expect(envelope.headerObject.fields.id == .string(plain))
            // Bytes that are not UTF-8 just before the closing quote of an unread value or key: still an error.
            for (prefix, suffix) in [
                (#"{"body": "", "headers": {"id": "i", "task": "t", "x": ""#, #""}}"#),
                (#"{"body": "", "headers": {"id": "i", "task": "t", ""#, #"": 1}}"#),
                (#"{"body": "", "headers": {"id": "i", "task": "t"}, "properties": {"body_encoding": "utf-8", "x": ""#, #""}}"#),
            ] {
                let bad = Array(prefix.utf8) + Array(plain.utf8) + [0xFF] + Array(suffix.utf8)
                let error = #expect(throws: CeleryProtocolError.self, "\(length)") { try KombuEnvelope(decoding: bad) }
                #expect(error?.code == .invalidEnvelope)
            }
            let control = #"{"body": "", "headers": {"id": "i", "task": "t", "x": ""# + plain + "\u{1}" + #""}}"#
            #expect(throws: CeleryProtocolError.self) { try KombuEnvelope(decoding: Array(control.utf8)) }
        }
    }

    @Test("a string is written as it is exactly when every byte is printable ASCII other than a quote or backslash")
    func plainStrings() {
        for length in [1, 7, 8, 9, 16, 17] {
            for position in 0..<length {
                for value in 0...255 {
                    var bytes = Array(repeating: UInt8(ascii: "a"), count: length)
                    bytes[position] = UInt8(value)
                    let plain = value >= 0x20 && value < 0x7F && value != 0x22 && value != 0x5C
                    #expect(bytes.withUnsafeBufferPointer { CeleryJSON.isPlain($0) } == plain, "\(value) at \(position) of \(length)")
                }
            }
        }
        #expect(CeleryJSON.encode("tab\there \"é\" \u{7F}") == Array(#""tab\there \"\u00e9\" \u007f""#.utf8))
    }

    @Test("literals: alone, at the end of the text, and among other values")
    func literals() throws {
        #expect(try CeleryJSON.decode("null") == .null)
        #expect(try CeleryJSON.decode("true") == .bool(true))
        #expect(try CeleryJSON.decode("false") == .bool(false))
        #expect(try CeleryJSON.decode("[true,false,null, NaN, Infinity]").arrayValue?.count == 5)
        #expect(try CeleryJSON.decode(#"{"a":false,"b":null,"c":true}"#) == ["a": false, "b": .null, "c": true])
    }

    @Test("containers keep order, empties keep their kind, duplicates behave like a Python dict")
    func containers() throws {
        let value = try CeleryJSON.decode(#"{"b": [], "a": {}, "b": 2}"#)
        #expect(value.objectValue?.keys.elements == ["b", "a"])
        #expect(value["b"] == 2)
        #expect(value["a"] == .object([:]))
        #expect(String(decoding: CeleryJSON.encode(value), as: UTF8.self) == #"{"b": 2, "a": {}}"#)
        // The same key spelled with an escape, among many keys, and the empty key twice.
        let keys = (0..<40).map { #""k\#($0)": \#($0)"# }.joined(separator: ", ")
        let escaped = try CeleryJSON.decode(#"{"ab": 1, \#(keys), "ab": 2, "": 3, "": 4}"#)
        #expect(escaped.objectValue?.count == 42)
        #expect(escaped.objectValue?.keys.first == "ab")
        #expect(escaped["ab"] == 2)
        #expect(escaped[""] == 4)
    }

    @Test(
        "malformed JSON is an error, never a crash",
        arguments: [
            "", "{", "[1,", "[1 2]", "{\"a\" 1}", "{1: 2}", "tru", "nul", "01x", "-", "1.", "1e", "[1]]", "\u{0}",
            "[nulx]", "[fals]", "[falsy]", "[truE]", "nULL", "[false", "null1",
            String(repeating: "[", count: 100_000),
        ])
    func malformedJSON(text: String) {
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode(text) }
    }

    @Test("kombu's tagged bytes decode to bytes and encode back")
    func taggedBytes() throws {
        let text = try CeleryJSON.decode(#"{"__type__": "bytes", "__value__": "abc"}"#)
        #expect(text == .bytes(Array("abc".utf8)))
        let binary = try CeleryJSON.decode(#"{"__type__": "base64", "__value__": "AP9hYg=="}"#)
        #expect(binary == .bytes([0x00, 0xFF, 0x61, 0x62]))
        #expect(String(decoding: CeleryJSON.encode(binary), as: UTF8.self) == #"{"__type__": "base64", "__value__": "AP9hYg=="}"#)
        let decimal = try CeleryJSON.decode(#"{"__type__": "decimal", "__value__": "1.5"}"#)
        #expect(decimal["__type__"] == "decimal")
    }

    @Test("msgpack round trip of every kind of value")
    func msgpackRoundTrip() throws {
        let value: CeleryValue = [
            .int(.min), .int(.max), .uint(.max), -1, 0, 127, 128, 65_536, 1.0, 0.1, "", "我将发送邮件",
            .bytes([0, 255]), [], .object([:]), ["z": 1, "a": [nil, true, false]],
        ]
        let packed = try CeleryMsgpack.encode(value)
        #expect(try CeleryMsgpack.decode(packed) == value)
    }

    @Test("msgpack errors: truncated, trailing bytes, extension types, invalid UTF-8")
    func msgpackErrors() throws {
        let packed = try CeleryMsgpack.encode(["a": [1, 2, 3]])
        #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.decode(packed.dropLast()) }
        #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.decode(packed + [0x01]) }
        #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.decode([0xD4, 0x01, 0x02]) }
        #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.decode([0xA2, 0xFF, 0xFE]) }
        #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.decode([]) }
        #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.decode([0xC1]) }
        // a map with an integer key, as Python can send it, keeps the entry under the key's JSON text
        #expect(try CeleryMsgpack.decode([0x81, 0x01, 0x02]) == ["1": 2])
    }

    @Test("Python repr of values and tuples")
    func repr() {
        #expect(PythonRepr.repr("我将发送邮件") == "'我将发送邮件'")
        #expect(PythonRepr.repr("it's") == "\"it's\"")
        #expect(PythonRepr.repr("a\nb\u{1}") == "'a\\nb\\x01'")
        #expect(PythonRepr.repr([nil, true, 1.0, ["k": 2]]) == "[None, True, 1.0, {'k': 2}]")
        #expect(PythonRepr.repr(.bytes([0, 0x41, 0x27])) == "b\"\\x00A'\"")
        #expect(PythonRepr.tuple(["a"]) == "('a',)")
        #expect(PythonRepr.tuple([2, 3]) == "(2, 3)")
        #expect(PythonRepr.tuple([]) == "()")
        #expect(PythonRepr.truncated(String(repeating: "x", count: 2000)).count == 1027)
    }

    @Test("bytes round-trip through kombu's base64 tag at every padding; bad base64 and bad UTF-8 are errors")
    func base64AndUTF8() throws {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<40 {
            // 0xFF makes the bytes invalid UTF-8, so the encoder must use the base64 tag.
            let bytes = [0xFF] + (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let encoded = CeleryJSON.encode(.bytes(bytes))
            #expect(String(decoding: encoded, as: UTF8.self).contains("base64"))
            #expect(try CeleryJSON.decode(encoded) == .bytes(bytes))
        }
        #expect(try CeleryJSON.decode(#"{"__type__": "base64", "__value__": "aGk"}"#) == .bytes(Array("hi".utf8)))
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode(#"{"__type__": "base64", "__value__": "a*Gk"}"#) }
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode(#"{"__type__": "base64", "__value__": "a"}"#) }
        #expect(try CeleryJSON.decode(Array(#""héllo 我""#.utf8)) == "héllo 我")
        // A truncated four-byte sequence is repaired by one U+FFFD of the same length: still rejected.
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode([0x22, 0xF0, 0x90, 0x80, 0x22]) }
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode([0x22, 0x61, 0xC3, 0x22]) }
        #expect(throws: CeleryProtocolError.self) { try CeleryJSON.decode([0x22, 0x5C, 0x6E, 0xFF, 0x22]) }
    }

    @Test("envelope errors keep the task id they could read")
    func envelopeErrors() throws {
        let badBase64 = #"{"body": "%%%", "headers": {"id": "abc", "task": "t"}, "properties": {"body_encoding": "base64"}}"#
        do {
            _ = try KombuEnvelope(decoding: Array(badBase64.utf8))
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .invalidBase64)
            #expect(error.taskID == "abc")
        }
        #expect(throws: CeleryProtocolError.self) { try KombuEnvelope(decoding: Array("[]".utf8)) }
        #expect(throws: CeleryProtocolError.self) { try KombuEnvelope(decoding: Array(#"{"headers": 5, "body": ""}"#.utf8)) }
    }

    @Test(
        "the envelope reader gives what the whole document says, for every shape of body",
        arguments: [
            #"{"body": "eyJhIjogMX0=", "content-type": "application/json", "properties": {"body_encoding": "base64"}}"#,
            #"{"body": "ey\/h", "properties": {"body_encoding": "base64"}, "headers": {"id": "x"}}"#,
            #"{"properties": {}, "body": "plain \u00e9 text", "content-encoding": "binary", "extra": [1, {"a": null}]}"#,
            #"{"body": "héllo", "body": "second wins", "headers": null, "properties": null}"#,
            #" {"body": "", "headers": {}} "#,
        ])
    func envelopeReader(text: String) throws {
        let envelope = try KombuEnvelope(decoding: Array(text.utf8))
        guard case .object(let document) = try CeleryJSON.decode(text), case .string(let body)? = document["body"] else {
            Issue.record("not an envelope: \(text)")
            return
        }
        let properties = document["properties"]?.objectValue ?? [:]
        let base64 = properties["body_encoding"]?.stringValue == "base64"
        #expect(envelope.body == (base64 ? Base64.decode(body.utf8) : Array(body.utf8)))
        #expect(envelope.properties == properties)
        #expect(envelope.headers == document["headers"]?.objectValue ?? [:])
        #expect(envelope.contentType == document["content-type"]?.stringValue ?? "application/json")
        #expect(envelope.contentEncoding == document["content-encoding"]?.stringValue ?? "utf-8")
    }

    @Test(
        "headers and properties, built only when read, and the fields the worker reads are the whole document's",
        arguments: [
            #"{"body": "W1tdLCB7fSwgbnVsbF0=", "headers": {"id": "a", "task": "t", "retries": 1, "lang": "py", "retries": 3}, "properties": {"body_encoding": "base64", "delivery_tag": "d1", "delivery_tag": "d2"}}"#,
            #"{"body": "[[], {}, null]", "headers": {"ro\u006ft_id": "r", "id": "i", "task": "t", "clé": "välue", "eta": null}, "properties": {"delivery\u005ftag": "esc", "priority": 3, "delivery_info": {"exchange": "ex", "routing_key": "rk", "redelivered": true}}}"#,
            #"{ "body" : "[[], {}, null]" , "headers" : { "id" : "i" , "task":"t" , "custom" : {"a": [1, 2.5, "x\"y"]} , "n" : -3e2 , "s" : "é\n", "timelimit": [10, 5.5], "group": "g", "group_index": 2 } , "properties" : { } }"#,
            #"{"body": "[[], {}, null]", "headers": {"id": "i", "task": "t"}, "properties": {"delivery_tag": "two", "priority": 0}}"#,
            #"{"body": "[[], {}, null]", "headers": {"id": "i", "task": "t", "shadow": "s", "parent_id": "p", "expires": "2026-01-01T00:00:00", "ignore_result": true, "argsrepr": "()", "kwargsrepr": "{}", "stamps": {}, "stamped_headers": null, "replaced_task_nesting": 0, "redelivered": true}, "properties": {"correlation_id": "i", "reply_to": "r", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "utf-8", "delivery_tag": "t"}}"#,
            // Celery's own order of keys, read by their expected spelling, with a key that starts like the next one
            // expected, two out of order, one with two spaces, a compact one and repeated keys after the last
            #"{"body": "[[], {}, null]", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "t", "idx": "not-id", "id": "i", "eta": null, "shadow": "s", "expires": null, "group":"g", "group_index": 1, "retries": 2, "timelimx": 1, "timelimit": [null, 4], "root_id": "r", "parent_id": null, "argsrepr": "()", "kwargsrepr": "{}", "origin": "o", "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}, "task": "t2", "id":  "i2"}, "properties": {"delivery_tag": "first", "correlation_id": "c", "reply_to": "r", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "utf-8", "delivery_tag": "last"}}"#,
            #"{"headers": {"lang": "py", "task": "t", "id": "i"}, "properties": {"delivery_tag": "d"}, "body": "[[], {}, null]", "body": "[[1], {}, null]"}"#,
            // delivery_info in every shape: members repeated, escaped, of other types, unknown; tagged; not an object
            #"{"body": "[[], {}, null]", "headers": {"id": "i", "task": "t", "redelivered": true}, "properties": {"delivery_info": {"x": [1, {"y": "\u00e9"}], "exchange": "a", "routing\u005fkey": "rk", "exchange": 5, "redelivered": false}}}"#,
            #"{"body": "[[], {}, null]", "headers": {"id": "i", "task": "t"}, "properties": {"delivery_info": {"routing_key": "only"}}}"#,
            #"{"body": "[[], {}, null]", "headers": {"id": "i", "task": "t"}, "properties": {"delivery_info": {"exchange": "e", "routing_key": "r"}}}"#,
            #"{"body": "[[], {}, null]", "headers": {"id": "i", "task": "t"}, "properties": {"delivery_info": {"__type__": "bytes", "__value__": "eA=="}}}"#,
            #"{"body": "[[], {}, null]", "headers": {"id": "i", "task": "t", "redelivered": true}, "properties": {"delivery_info": [1, 2], "priority": 4}}"#,
        ])
    func lazyHeadersAndProperties(text: String) throws {
        let envelope = try KombuEnvelope(decoding: Array(text.utf8))
        let document = try CeleryJSON.decode(text)
        let headers = document["headers"]?.objectValue ?? [:]
        let properties = document["properties"]?.objectValue ?? [:]
        #expect(envelope.headers == headers)
        #expect(envelope.properties == properties)
        #expect(envelope.deliveryTag == properties["delivery_tag"]?.stringValue)
        let info = properties["delivery_info"]
        let expectedInfo = DeliveryInfo(
            exchange: info?["exchange"]?.stringValue ?? "", routingKey: info?["routing_key"]?.stringValue ?? "",
            priority: properties["priority"]?.intValue ?? 0,
            redelivered: info?["redelivered"]?.boolValue ?? headers["redelivered"]?.boolValue ?? false)
        #expect(envelope.deliveryInfo == expectedInfo)

        let message = try CeleryTaskMessage(envelope: envelope, accept: [.json])
        #expect(message.headers == headers)
        func header(_ key: String) -> CeleryValue? { headers[key].flatMap { $0.isNull ? nil : $0 } }
        #expect(message.id == header("id")?.stringValue)
        #expect(message.retries == header("retries")?.intValue ?? 0)
        #expect(message.rootID == header("root_id")?.stringValue)
        #expect(message.parentID == header("parent_id")?.stringValue)
        #expect(message.groupID == header("group")?.stringValue)
        #expect(message.groupIndex == header("group_index")?.intValue)
        #expect(message.eta == header("eta")?.stringValue)
        #expect(message.expires == header("expires")?.stringValue)
        #expect(message.ignoreResult == header("ignore_result")?.boolValue)
        #expect(message.shadow == header("shadow")?.stringValue)
        #expect(message.timeLimit.hard == header("timelimit")?.arrayValue?.first?.doubleValue)
        #expect(message.timeLimit.soft == header("timelimit")?.arrayValue?.last?.doubleValue)
        #expect(message.eventHeaders.argsRepr == headers["argsrepr"] ?? .null)
        #expect(message.eventHeaders.rootID == headers["root_id"] ?? .null)

        // Writing the headers replaces what the fields read.
        var changed = message
        changed.headers["retries"] = 7
        changed.headers["root_id"] = "new-root"
        #expect(changed.retries == 7)
        #expect(changed.rootID == "new-root")
        #expect(changed.headers["retries"] == 7)
        #expect(message.retries == header("retries")?.intValue ?? 0)
    }

    @Test("a header or property the worker does not read is still checked: a bad one makes the envelope invalid")
    func unreadMembersAreChecked() {
        for text in [
            #"{"body": "", "headers": {"id": "i", "task": "t", "x": "\uZZZZ"}}"#,
            #"{"body": "", "headers": {"id": "i", "task": "t", "x": "tab\#there"}}"#,
            #"{"body": "", "headers": {"id": "i", "task": "t", "x": 0123}}"#,
            #"{"body": "", "headers": {"id": "i", "task": "t", "x": 1"# + String(repeating: "0", count: 4300) + "}}",
            #"{"body": "", "headers": {"id": "i", "task": "t", "x": [1, }}"#,
            #"{"body": "", "properties": {"correlation_id": "\q", "delivery_tag": "t"}}"#,
            #"{"body": "", "properties": {"reply_to": tru, "delivery_tag": "t"}}"#,
            #"{"body": "", "headers": {"__type__": "base64", "__value__": "!!"}}"#,
            #"{"body": "", "headers": {"__type__": "bytes", "__value__": "x"}}"#,
            #"{"body": "", "properties": {"delivery_info": {"exchange": "", "x": "\uZZZZ", "routing_key": "q"}}}"#,
            #"{"body": "", "properties": {"delivery_info": {"exchange": "a\#tb", "routing_key": "q", "y": 1}}}"#,
            #"{"body": "", "properties": {"delivery_info": {"exchange": "", "routing_key": "q", "z": [1, }}}"#,
            #"{"body": "", "properties": {"delivery_info": {"__type__": "base64", "__value__": "!!"}}}"#,
        ] {
            let error = #expect(throws: CeleryProtocolError.self, "\(text)") { try KombuEnvelope(decoding: Array(text.utf8)) }
            #expect(error?.code == .invalidEnvelope, "\(text)")
        }
        // Not UTF-8, in an unread header's value and in an unread header's key.
        for bad: [UInt8] in [[0xC3, 0x28], [0xFF]] {
            for document in [
                Array(#"{"body": "", "headers": {"id": "i", "task": "t", "x": ""#.utf8) + bad + Array(#""}}"#.utf8),
                Array(#"{"body": "", "headers": {"id": "i", "task": "t", ""#.utf8) + bad + Array(#"": 1}}"#.utf8),
            ] {
                let error = #expect(throws: CeleryProtocolError.self) { try KombuEnvelope(decoding: document) }
                #expect(error?.code == .invalidEnvelope)
            }
        }
    }

    @Test(
        "the fields recorded in unacked are read as the whole document gives them, skipping the rest",
        arguments: [
            #"{"body": "e30=", "headers": {"id": "a", "nested": [1, -2.5e3, {"x": [true, false, null]}, "q\"\\"]}, "properties": {"delivery_tag": "t1", "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#,
            #"{"properties": {"delivery_tag": "first"}, "properties": {"delivery_tag": "last", "delivery_info": {"exchange": "ex\u00e9", "routing_key": "r\n"}}}"#,
            #"{"properties": {"delivery_info": {"routing_key": 5}, "delivery_tag": "only-tag"}, "body": "x"}"#,
            #" {"headers": {}, "properties": {"delivery_tag": "t"}, "extra": [[], {}, "", 0]} "#,
            #"{"properties": {"delivery_tag": 7}}"#,
            #"{"body": "no properties"}"#,
            #"{"headers": {"a": 1,}, "properties": {"delivery_tag": "broken before"}}"#,
            #"{"properties": {"delivery_tag": "trailing"}} x"#,
            #"["properties", {"delivery_tag": "not an object"}]"#,
            #"{"headers": "tab\#there", "properties": {"delivery_tag": "control character"}}"#,
        ])
    func deliveryFields(text: String) throws {
        let fields = KombuEnvelope.deliveryFields(of: Array(text.utf8))
        let properties = (try? CeleryJSON.decode(text))?["properties"]
        guard case .string(let tag)? = properties?["delivery_tag"] else {
            #expect(fields == nil)
            return
        }
        let info = properties?["delivery_info"]
        #expect(fields?.tag == tag)
        #expect(fields?.exchange == info?["exchange"]?.stringValue ?? "")
        #expect(fields?.routingKey == info?["routing_key"]?.stringValue ?? "")
    }

    @Test("the delivery fields of every golden message are those of its whole document")
    func deliveryFieldsOfFixtures() throws {
        let names = Fixtures.names(suffix: ".message.json")
        #expect(names.count >= 10)
        for name in names {
            let raw = try Fixtures.bytes(name + ".message.json")
            let properties = try CeleryJSON.decode(raw)["properties"]
            let fields = try #require(KombuEnvelope.deliveryFields(of: raw), "\(name)")
            #expect(fields.tag == properties?["delivery_tag"]?.stringValue)
            #expect(fields.routingKey == properties?["delivery_info"]?["routing_key"]?.stringValue)
        }
    }

    @Test("an envelope that is not JSON, or whose body is not UTF-8, is an invalid envelope")
    func envelopeReaderErrors() {
        for bytes: [UInt8] in [
            Array(#"{"body": "a", }"#.utf8), Array(#"{"body": "a"} x"#.utf8), Array(#"{"body": "a""#.utf8),
            [0x7B, 0x22, 0x62, 0x6F, 0x64, 0x79, 0x22, 0x3A, 0x22, 0xC3, 0x22, 0x7D],  // {"body":"<C3>"}
            Array(#"{"body": "tab\#there"}"#.utf8), Array("5".utf8),
        ] {
            let error = #expect(throws: CeleryProtocolError.self, "\(String(decoding: bytes, as: UTF8.self))") {
                try KombuEnvelope(decoding: bytes)
            }
            #expect(error?.code == .invalidEnvelope)
        }
    }

    @Test(
        "a protocol 2 JSON body is read into args, kwargs and embed as the general decoding reads it",
        arguments: [
            (#"[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#, true),
            (
                #"[[2, 3.5, "x"], {"k": [1, {"a": null}]}, "#
                    + #"{"callbacks": [{"task": "t"}], "errbacks": null, "chain": [], "chord": null, "group": "g"}]"#, true
            ),
            (" [ [1] , {} , null ] \n", true),
            // a repeated member keeps its last value; an escaped key spells the same member
            (#"[[], {}, {"chain": [1], "chord": null, "chain": [2]}]"#, true),
            (#"[[], {}, {"\u0063hain": [1], "a": 1, "b": 2}]"#, true),
            (#"[[], {}, {}]"#, true),
            // two members: read the general way (it could be a tagged value), with the same result
            (#"[[], {}, {"chain": [1], "chord": {"x": 1}}]"#, false),
            (#"[[], {"__type__": "bytes", "__value__": "YQ=="}, {}]"#, false),
        ])
    func taskBodyFastPath(body: String, fastPathReadsIt: Bool) throws {
        let parts = try #require(try CeleryJSON.decode(body).arrayValue)
        let envelope = KombuEnvelope(
            body: Array(body.utf8), contentType: "application/json", contentEncoding: "utf-8",
            headers: ["id": "i", "task": "t"], properties: [:])
        let message: CeleryTaskMessage
        do {
            message = try CeleryTaskMessage(envelope: envelope, accept: [.json])
        } catch {
            // kwargs that are kombu's tagged bytes: not a dict, in both paths
            #expect(parts[1].objectValue == nil)
            #expect(error.message == "kwargs (body[1]) is not a dict")
            return
        }
        #expect(.array(message.args) == parts[0])
        #expect(.object(message.kwargs) == parts[1])
        let embed = parts[2]
        #expect(message.embed.callbacks == embed["callbacks"] ?? .null)
        #expect(message.embed.errbacks == embed["errbacks"] ?? .null)
        #expect(message.embed.chain == embed["chain"] ?? .null)
        #expect(message.embed.chord == embed["chord"] ?? .null)
        #expect(message.hasCallbacksOrChain == !(message.embed.callbacks.isNull && message.embed.chain.isNull))
        #expect(message.isChordPart == !message.embed.chord.isNull)
        #expect((CeleryJSON.taskBody(Array(body.utf8)) != nil) == fastPathReadsIt)
    }

    @Test("a protocol 2 msgpack body is read into args, kwargs and embed as the general decoding reads it")
    func msgpackTaskBodyFastPath() throws {
        let bodies: [CeleryValue] = [
            [[], [:], ["callbacks": nil, "errbacks": nil, "chain": nil, "chord": nil]],
            [[2, 3.5, "x", .bytes([0, 255])], ["k": [1, ["a": nil]]], ["callbacks": [["task": "t"]], "chain": [], "group": "g"]],
            [[1], [:], nil],
            [[], [:], [:]],
            [[], [:], ["chain": [1], "chord": ["x": 1]]],
        ]
        for body in bodies {
            let bytes = try CeleryMsgpack.encode(body)
            let parts = try #require(body.arrayValue)
            let fast = try #require(CeleryMsgpack.taskBody(bytes))
            let envelope = KombuEnvelope(
                body: bytes, contentType: "application/x-msgpack", contentEncoding: "binary",
                headers: ["id": "i", "task": "t"], properties: [:])
            let message = try CeleryTaskMessage(envelope: envelope, accept: [.msgpack])
            for (args, kwargs, embed) in [(message.args, message.kwargs, message.embed), fast] {
                #expect(.array(args) == parts[0])
                #expect(.object(kwargs) == parts[1])
                #expect(embed.callbacks == parts[2]["callbacks"] ?? .null)
                #expect(embed.errbacks == parts[2]["errbacks"] ?? .null)
                #expect(embed.chain == parts[2]["chain"] ?? .null)
                #expect(embed.chord == parts[2]["chord"] ?? .null)
            }
        }
        // An embed key that is not a string, or not UTF-8, is left to the general decoding: the first is dropped
        // there too, the second is an error.
        let intKey: [UInt8] = [0x93, 0x90, 0x80, 0x81, 0x01, 0xC0]
        #expect(CeleryMsgpack.taskBody(intKey) == nil)
        #expect(try CeleryMsgpack.decode(intKey) == [[], [:], ["1": nil]])
        let badKey: [UInt8] = [0x93, 0x90, 0x80, 0x81, 0xA1, 0xFF, 0xC0]
        #expect(CeleryMsgpack.taskBody(badKey) == nil)
        #expect(throws: CeleryProtocolError.self) { try CeleryMsgpack.decode(badKey) }
        for shape in [[0x92, 0x90, 0x80], [0x93, 0x80, 0x80, 0x80], [0x93, 0x90, 0x90, 0x80], [0x93, 0x90, 0x80, 0x05]] as [[UInt8]] {
            #expect(CeleryMsgpack.taskBody(shape) == nil)
        }
    }

    @Test("a body the fast path declines fails with the general decoding's errors")
    func taskBodyErrors() throws {
        let cases: [(String, String)] = [
            (#"[[1], {}]"#, "v2 body has 2 elements, expected [args, kwargs, embed]"),
            (#"[[1], {}, {}, {}]"#, "v2 body has 4 elements, expected [args, kwargs, embed]"),
            (#"[1, {}, {}]"#, "args (body[0]) is not a list"),
            (#"[[], [], {}]"#, "kwargs (body[1]) is not a dict"),
            (#"[[], {}, 5]"#, "embed (body[2]) is not a dict"),
            (#"[[], {}, {"__type__": "bytes", "__value__": "YQ=="}]"#, "embed (body[2]) is not a dict"),
            (#"[[], {}, {"chain": nul}]"#, "body does not decode as json: invalid literal at byte 19"),
            (#"[[], {}, {}] x"#, "body does not decode as json: unexpected data after the JSON value at byte 13"),
        ]
        for (body, expected) in cases {
            #expect(CeleryJSON.taskBody(Array(body.utf8)) == nil, "\(body)")
            let envelope = KombuEnvelope(
                body: Array(body.utf8), contentType: "application/json", contentEncoding: "utf-8",
                headers: ["id": "i", "task": "t"], properties: [:])
            do {
                _ = try CeleryTaskMessage(envelope: envelope, accept: [.json])
                Issue.record("\(body) decoded")
            } catch {
                #expect(error.message == expected, "\(body)")
                #expect(error.taskID == "i")
            }
        }
    }

    @Test("task message shape errors and content types")
    func taskMessageErrors() throws {
        func message(body: String, contentType: String = "application/json", headers: CeleryValue = ["id": "i", "task": "t"])
            throws(CeleryProtocolError) -> CeleryTaskMessage
        {
            let envelope = KombuEnvelope(
                body: Array(body.utf8), contentType: contentType, contentEncoding: "utf-8",
                headers: headers.objectValue ?? [:], properties: [:])
            return try CeleryTaskMessage(envelope: envelope, accept: [.json, .msgpack])
        }
        #expect(try message(body: #"[[1], {"a": 1}, null]"#).args == [1])
        #expect(try message(body: #"{"args": [1], "kwargs": {}}"#).protocolVersion == 2)  // hybrid
        for bad in [#"[[1], {}]"#, #"[1, {}, {}]"#, #"[[], [], {}]"#, #"[[], {}, 5]"#, #""text""#] {
            #expect(throws: CeleryProtocolError.self) { try message(body: bad) }
        }
        do {
            _ = try message(body: "anything", contentType: "application/x-python-serialize")
            Issue.record("pickle must not be accepted")
        } catch {
            #expect(error.code == .unsupportedContentType)
            #expect(error.taskID == "i")
        }
        do {
            _ = try message(body: #"{"hello": 1}"#, headers: [:])
            Issue.record("a message without a task name must fail")
        } catch {
            #expect(error.code == .invalidTaskMessage)
            #expect(error.taskID == nil)
        }
    }
}

@Suite("Envelopes cut once around their body and delivery tag")
struct EnvelopeTemplateTests {
    @Test("base64 of every length and tail, as Foundation writes it")
    func base64() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<70 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(Base64.encode(bytes) == Array(Data(bytes).base64EncodedString().utf8), "\(length) bytes")
            var appended = Array("prefix".utf8)
            Base64.append(bytes[...], into: &appended)
            #expect(appended == Array("prefix".utf8) + Array(Data(bytes).base64EncodedString().utf8))
        }
    }

    @Test("a template writes the bytes of the whole envelope, whatever the body and the tag")
    func sameBytes() throws {
        let headers: OrderedDictionary<String, CeleryValue> = ["hostname": "w@h\u{e9}"]
        let properties: OrderedDictionary<String, CeleryValue> = [
            "delivery_mode": 1, "delivery_info": ["exchange": "celeryev", "routing_key": "task.multi"], "priority": 0,
            "body_encoding": "base64", "delivery_tag": "", "after": "a tag's neighbour",
        ]
        let template = try #require(
            KombuEnvelopeTemplate(contentType: "application/json", contentEncoding: "utf-8", headers: headers, properties: properties))
        for (body, tag) in [("", "t"), ("[1]", "6e5b7ad1-0f0e-4d8c-9d7c-1c2d3e4f5a6b"), ("[{\"a\": \"\\u00e9\"}]", "a \"quoted\" tag\u{e9}")] {
            var tagged = properties
            tagged["delivery_tag"] = .string(tag)
            let whole = KombuEnvelope(
                body: Array(body.utf8), contentType: "application/json", contentEncoding: "utf-8", headers: headers, properties: tagged)
            #expect(template.encoded(body: Array(body.utf8), deliveryTag: tag) == whole.encoded(), "\(body) \(tag)")
        }
    }

    @Test("no template where the envelope cannot be cut: a compression header, no delivery tag, the marker elsewhere")
    func refused() {
        let properties: OrderedDictionary<String, CeleryValue> = ["body_encoding": "base64", "delivery_tag": ""]
        #expect(
            KombuEnvelopeTemplate(
                contentType: "application/json", contentEncoding: "utf-8", headers: ["compression": "application/x-gzip"], properties: properties)
                == nil)
        #expect(KombuEnvelopeTemplate(contentType: "application/json", contentEncoding: "utf-8", headers: [:], properties: ["priority": 0]) == nil)
        #expect(
            KombuEnvelopeTemplate(
                contentType: "application/json", contentEncoding: "utf-8", headers: ["x": "\u{1}kombu-delivery-tag\u{1}"], properties: properties)
                == nil)
    }
}
