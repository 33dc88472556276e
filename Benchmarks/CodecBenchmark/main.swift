// Decoding and encoding one message, timed and with its heap allocations counted: what the worker does per task
// before and after the task body. Run it as Benchmarks/codec.sh does (release build, malloc counter preloaded).
import CeleryProtocol
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Heap allocations so far, from Benchmarks/CodecBenchmark/malloc-count.c when it is preloaded.
let allocationCounter: (@convention(c) () -> UInt64)? = {
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "malloc_count_total") else { return nil }
    return unsafeBitCast(symbol, to: (@convention(c) () -> UInt64).self)
}()

func measure(_ name: String, iterations: Int, _ body: () throws -> Void) rethrows {
    for _ in 0..<min(1000, iterations) { try body() }  // warm up
    let allocationsBefore = allocationCounter?() ?? 0
    let start = ContinuousClock.now
    for _ in 0..<iterations { try body() }
    let elapsed = ContinuousClock.now - start
    let allocations = allocationCounter.map { Double($0() - allocationsBefore) / Double(iterations) }
    let (seconds, attoseconds) = elapsed.components
    let nanoseconds = (Double(seconds) * 1e9 + Double(attoseconds) / 1e9) / Double(iterations)
    let allocationText = allocations.map { String(format: "%6.1f allocations", $0) } ?? "allocations: preload malloc-count.so"
    print(name.padding(toLength: 44, withPad: " ", startingAt: 0) + String(format: " %8.2f µs  ", nanoseconds / 1000) + allocationText)
}

let arguments = CommandLine.arguments
let iterations = arguments.count > 1 ? Int(arguments[1]) ?? 20_000 : 20_000
let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Tests/Fixtures")
for name in ["v2-json-add", "v2-msgpack-add", "v2-json-chain"] {
    let raw = Array(try Data(contentsOf: fixtures.appendingPathComponent("\(name).message.json")))
    try measure("decode \(name) (envelope + body)", iterations: iterations) {
        let envelope = try KombuEnvelope(decoding: raw)
        _ = try CeleryTaskMessage(envelope: envelope, accept: [.json, .msgpack])
    }
}
for serializer in [CeleryContentType.json, .msgpack] {
    let document = CeleryResultDocument(
        taskID: "af315b36-74a0-4591-b8b6-cf1679563617", status: .success, result: 5, traceback: nil, children: [],
        dateDone: "2026-11-25T05:00:00.000000+00:00")
    try measure("encode a SUCCESS result (\(serializer.serializerName))", iterations: iterations) {
        _ = try document.encoded(as: serializer)
    }
}
