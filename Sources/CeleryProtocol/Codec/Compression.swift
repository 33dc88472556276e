import CCompression

/// A compression kombu applies to a task message's body (its `compression` header, set by `task_compression` or
/// `apply_async(compression=…)`): the methods of `kombu/compression.py`, those every Python build has and the two
/// (`brotli` and `zstd`) that kombu registers when their Python packages are installed. Their libraries are loaded the
/// first time they are asked for (``checkAvailable()``).
public enum KombuCompression: String, Sendable, CaseIterable {
    /// kombu's `zlib` (aliases `gzip`, `zlib`): the zlib format, despite the name of its content type.
    case zlib = "application/x-gzip"
    /// kombu's `bzip2` (aliases `bzip2`, `bzip`).
    case bzip2 = "application/x-bz2"
    /// kombu's `lzma` (aliases `lzma`, `xz`): the xz format.
    case lzma = "application/x-lzma"
    /// kombu's `brotli`, registered when Python's `brotli` package is installed.
    case brotli = "application/x-brotli"
    /// kombu's `zstd` (aliases `zstd`, `zstandard`), registered when Python's `zstandard` package (kombu 5.3) or
    /// `backports.zstd` (kombu 5.7, Python before 3.14) is installed.
    case zstd = "application/zstd"

    /// The most a body may grow to when it is decompressed: 512 MiB, Redis's own limit for one value. kombu sets
    /// none; past this a message is refused rather than the worker's memory exhausted.
    public static let decompressedLimit = 512 << 20

    /// The method a name stands for, as `kombu.compression` looks it up: its content type or one of its aliases.
    public init?(name: String) {
        switch name {
        case "application/x-gzip", "gzip", "zlib": self = .zlib
        case "application/x-bz2", "bzip2", "bzip": self = .bzip2
        case "application/x-lzma", "lzma", "xz": self = .lzma
        case "application/x-brotli", "brotli": self = .brotli
        case "application/zstd", "zstd", "zstandard": self = .zstd
        default: return nil
        }
    }

    /// The supported methods by the names users give them, for error messages.
    public static let supportedNames = "zlib (gzip), bzip2, lzma (xz), brotli or zstd"

    /// The content type kombu writes in the `compression` header.
    public var contentType: String { rawValue }

    /// The name `task_compression` usually gives it: `zlib`, `bzip2`, `lzma`, `brotli` or `zstd`.
    public var name: String {
        switch self {
        case .zlib: "zlib"
        case .bzip2: "bzip2"
        case .lzma: "lzma"
        case .brotli: "brotli"
        case .zstd: "zstd"
        }
    }

    /// Why this method cannot run on this machine (its library, loaded at first use, is missing), thrown; nothing
    /// for zlib, bzip2 and lzma, which are linked. Call it where a setting or an option chooses the method to
    /// ``compress(_:)`` with, so that a missing library is an error there and then: compressing stops the program
    /// when it is. Decompressing fails with this error as it fails for a corrupt body.
    public func checkAvailable() throws(CeleryProtocolError) {
        let failure: UnsafePointer<CChar>? =
            switch self {
            case .zlib, .bzip2, .lzma: nil
            case .brotli: ccompression_brotli_load()
            case .zstd: ccompression_zstd_load()
            }
        if let failure {
            throw CeleryProtocolError(code: .invalidCompression, message: "\(name) is not available: \(String(cString: failure))")
        }
    }

    /// Compresses `bytes` as Python's `zlib.compress`, `bz2.compress`, `lzma.compress`, `brotli.compress` and
    /// zstd's `compress` do with their defaults (zlib level 6, bzip2 level 9, xz preset 6 with a CRC64 check, brotli
    /// quality 11 with a 4 MiB window, zstd level 3 with the content size in the frame header and no checksum).
    public func compress(_ bytes: [UInt8]) -> [UInt8] {
        do throws(CeleryProtocolError) {
            try checkAvailable()
        } catch {
            preconditionFailure("\(error.message): check it where the method is chosen")
        }
        return bytes.withUnsafeBufferPointer { input in
            switch self {
            case .zlib: Self.compressZlib(input)
            case .bzip2: Self.compressBzip2(input)
            case .lzma: Self.compressLzma(input)
            case .brotli: Self.compressBrotli(input)
            case .zstd: Self.compressZstd(input)
            }
        }
    }

    /// Decompresses a body this method compressed. Like Python's functions, bzip2, xz and zstd read streams (frames)
    /// written one after another, zlib ignores bytes after the end of its stream, and brotli refuses them. Past
    /// `limit` bytes of output it stops with an error.
    public func decompress(
        _ bytes: some Collection<UInt8>, limit: Int = decompressedLimit
    ) throws(CeleryProtocolError) -> [UInt8] {
        do throws(CeleryProtocolError) {
            try checkAvailable()
        } catch {
            throw failure(error.message)
        }
        let bytes = Array(bytes)
        let result: Result<[UInt8], CeleryProtocolError> = bytes.withUnsafeBufferPointer { input in
            switch self {
            case .zlib: Self.inflate(input, limit: limit)
            case .bzip2: Self.decompressBzip2(input, limit: limit)
            case .lzma: Self.decompressLzma(input, limit: limit)
            case .brotli: Self.decompressBrotli(input, limit: limit)
            case .zstd: Self.decompressZstd(input, limit: limit)
            }
        }
        return try result.get()
    }

    private func failure(_ what: String) -> CeleryProtocolError {
        CeleryProtocolError(code: .invalidCompression, message: "body does not decompress as \(contentType): \(what)")
    }

    // MARK: zlib

    private static func compressZlib(_ input: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        var size = compressBound(uLong(input.count))
        var output = [UInt8](repeating: 0, count: Int(size))
        let status = output.withUnsafeMutableBufferPointer { out in
            compress2(out.baseAddress, &size, input.baseAddress, uLong(input.count), Z_DEFAULT_COMPRESSION)
        }
        precondition(status == Z_OK, "compress2 failed (\(status)) with a buffer of compressBound's size")
        output.removeSubrange(Int(size)...)
        return output
    }

    private static func inflate(_ input: UnsafeBufferPointer<UInt8>, limit: Int) -> Result<[UInt8], CeleryProtocolError> {
        var stream = z_stream()
        // 32 + 15: the zlib format kombu writes, or gzip's, told apart by the header.
        guard inflateInit2_(&stream, 32 + MAX_WBITS, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            return .failure(KombuCompression.zlib.failure("zlib could not start"))
        }
        defer { inflateEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
        stream.avail_in = uInt(input.count)
        return drain(into: KombuCompression.zlib, limit: limit) { out in
            stream.next_out = out.baseAddress
            stream.avail_out = uInt(out.count)
            let status = CCompression.inflate(&stream, Z_NO_FLUSH)
            let written = out.count - Int(stream.avail_out)
            switch status {
            case Z_STREAM_END: return .end(written)
            case Z_OK: return .more(written)
            case Z_BUF_ERROR where stream.avail_in == 0: return .failed("the stream is truncated")
            case Z_BUF_ERROR: return .more(written)
            default: return .failed(stream.msg.map { String(cString: $0) } ?? "error \(status)")
            }
        }
    }

    // MARK: bzip2

    private static func compressBzip2(_ input: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        // bzip2's documented bound: 1 % more than the input, plus 600 bytes.
        var size = UInt32(input.count + input.count / 100 + 600)
        var output = [UInt8](repeating: 0, count: Int(size))
        let status = output.withUnsafeMutableBufferPointer { out in
            out.withMemoryRebound(to: CChar.self) { out in
                BZ2_bzBuffToBuffCompress(
                    out.baseAddress, &size, UnsafeMutableRawPointer(mutating: input.baseAddress)?.assumingMemoryBound(to: CChar.self),
                    UInt32(input.count), 9, 0, 0)
            }
        }
        precondition(status == BZ_OK, "BZ2_bzBuffToBuffCompress failed (\(status)) with a buffer of its bound")
        output.removeSubrange(Int(size)...)
        return output
    }

    private static func decompressBzip2(_ input: UnsafeBufferPointer<UInt8>, limit: Int) -> Result<[UInt8], CeleryProtocolError> {
        var stream = bz_stream()
        var started = false
        defer { if started { BZ2_bzDecompressEnd(&stream) } }
        var remaining = UInt32(input.count)
        var next = UnsafeMutableRawPointer(mutating: input.baseAddress)?.assumingMemoryBound(to: CChar.self)
        return drain(into: KombuCompression.bzip2, limit: limit) { out in
            if !started {
                guard BZ2_bzDecompressInit(&stream, 0, 0) == BZ_OK else { return .failed("bzip2 could not start") }
                started = true
                stream.next_in = next
                stream.avail_in = remaining
            }
            let status = out.withMemoryRebound(to: CChar.self) { out in
                stream.next_out = out.baseAddress
                stream.avail_out = UInt32(out.count)
                return BZ2_bzDecompress(&stream)
            }
            let written = out.count - Int(stream.avail_out)
            switch status {
            case BZ_STREAM_END where stream.avail_in == 0:
                return .end(written)
            case BZ_STREAM_END:
                // Another stream follows, as `bz2.decompress` allows: start again on the rest.
                next = stream.next_in
                remaining = stream.avail_in
                BZ2_bzDecompressEnd(&stream)
                started = false
                return .more(written)
            case BZ_OK where stream.avail_in == 0 && written < out.count:
                return .failed("the stream is truncated")
            case BZ_OK:
                return .more(written)
            default:
                return .failed("error \(status)")
            }
        }
    }

    // MARK: lzma

    /// With the stream encoder, as Python's `LZMACompressor`: its block header leaves the sizes out, where the
    /// one-buffer encoder writes them, so only this gives Python's bytes.
    private static func compressLzma(_ input: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        // All zeros: what LZMA_STREAM_INIT sets.
        var stream = lzma_stream()
        let started = lzma_easy_encoder(&stream, 6, LZMA_CHECK_CRC64)
        precondition(started == LZMA_OK, "lzma_easy_encoder failed (\(started))")
        defer { lzma_end(&stream) }
        switch runLzma(&stream, on: input, limit: .max) {
        case .success(let bytes): return bytes
        case .failure(let error): preconditionFailure("lzma could not compress: \(error.message)")
        }
    }

    private static func decompressLzma(_ input: UnsafeBufferPointer<UInt8>, limit: Int) -> Result<[UInt8], CeleryProtocolError> {
        var stream = lzma_stream()
        // xz or the older .lzma format, as Python's FORMAT_AUTO; streams one after another, as `lzma.decompress`.
        guard lzma_auto_decoder(&stream, UInt64.max, ccompression_lzma_concatenated) == LZMA_OK else {
            return .failure(KombuCompression.lzma.failure("lzma could not start"))
        }
        defer { lzma_end(&stream) }
        return runLzma(&stream, on: input, limit: limit)
    }

    /// Runs an lzma encoder or decoder over all of `input` to the end of its stream.
    private static func runLzma(
        _ stream: inout lzma_stream, on input: UnsafeBufferPointer<UInt8>, limit: Int
    ) -> Result<[UInt8], CeleryProtocolError> {
        stream.next_in = input.baseAddress
        stream.avail_in = input.count
        return drain(into: KombuCompression.lzma, limit: limit) { out in
            stream.next_out = out.baseAddress
            stream.avail_out = out.count
            let status = lzma_code(&stream, LZMA_FINISH)
            let written = out.count - stream.avail_out
            switch status {
            case LZMA_STREAM_END: return .end(written)
            case LZMA_OK: return .more(written)
            case LZMA_BUF_ERROR: return .failed("the stream is truncated")
            case LZMA_FORMAT_ERROR: return .failed("not the xz or lzma format")
            case LZMA_DATA_ERROR: return .failed("the data is corrupt")
            default: return .failed("error \(status.rawValue)")
            }
        }
    }

    // MARK: brotli

    private static func compressBrotli(_ input: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        var size = ccompression_BrotliEncoderMaxCompressedSize(input.count)
        precondition(size > 0, "a body of \(input.count) bytes is too large for brotli")
        var output = [UInt8](repeating: 0, count: size)
        let done = output.withUnsafeMutableBufferPointer { out in
            ccompression_BrotliEncoderCompress(
                BROTLI_MAX_QUALITY, BROTLI_DEFAULT_WINDOW, BROTLI_MODE_GENERIC, input.count, input.baseAddress, &size, out.baseAddress)
        }
        precondition(done == BROTLI_TRUE, "BrotliEncoderCompress failed with a buffer of its bound")
        output.removeSubrange(size...)
        return output
    }

    private static func decompressBrotli(_ input: UnsafeBufferPointer<UInt8>, limit: Int) -> Result<[UInt8], CeleryProtocolError> {
        guard let state = ccompression_BrotliDecoderCreateInstance() else {
            return .failure(KombuCompression.brotli.failure("brotli could not start"))
        }
        defer { ccompression_BrotliDecoderDestroyInstance(state) }
        var available = input.count
        var next = input.baseAddress
        return drain(into: KombuCompression.brotli, limit: limit) { out in
            var room = out.count
            var into = out.baseAddress
            let status = ccompression_BrotliDecoderDecompressStream(state, &available, &next, &room, &into)
            let written = out.count - room
            switch status {
            case BROTLI_DECODER_RESULT_SUCCESS where available == 0: return .end(written)
            case BROTLI_DECODER_RESULT_SUCCESS: return .failed("bytes follow the end of the stream")
            case BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT: return .more(written)
            case BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT: return .failed("the stream is truncated")
            default: return .failed(String(cString: ccompression_BrotliDecoderError(state)))
            }
        }
    }

    // MARK: zstd

    private static func compressZstd(_ input: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: ccompression_ZSTD_compressBound(input.count))
        // The one-call API writes the content size in the frame header, which kombu 5.3's `zstandard` needs to read it.
        let size = output.withUnsafeMutableBufferPointer { out in
            ccompression_ZSTD_compress(out.baseAddress, out.count, input.baseAddress, input.count, 3)
        }
        precondition(ccompression_ZSTD_isError(size) == 0, "ZSTD_compress failed with a buffer of its bound")
        output.removeSubrange(size...)
        return output
    }

    private static func decompressZstd(_ input: UnsafeBufferPointer<UInt8>, limit: Int) -> Result<[UInt8], CeleryProtocolError> {
        guard let context = ccompression_ZSTD_createDCtx() else { return .failure(KombuCompression.zstd.failure("zstd could not start")) }
        defer { ccompression_ZSTD_freeDCtx(context) }
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        return drain(into: KombuCompression.zstd, limit: limit) { out in
            var target = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
            while true {
                let status = ccompression_ZSTD_decompressStream(context, &target, &source)
                if ccompression_ZSTD_isError(status) != 0 { return .failed(String(cString: ccompression_ZSTD_getErrorName(status))) }
                // 0: a frame is whole and flushed; another may follow, as zstd's `decompress` reads them all.
                if status == 0, source.pos == source.size { return .end(target.pos) }
                if target.pos == target.size { return .more(target.pos) }
                if source.pos == source.size { return .failed("the stream is truncated") }
            }
        }
    }

    // MARK: Output

    /// What one call of a decompressor did with the room it was given.
    private enum Step {
        /// Wrote this many bytes; the stream goes on.
        case more(Int)
        /// Wrote this many bytes and reached the end of the stream.
        case end(Int)
        case failed(String)
    }

    /// Runs a coder, giving it room in a growing buffer until it reports the end of its stream; fails past `limit`.
    private static func drain(
        into method: KombuCompression, limit: Int, _ step: (UnsafeMutableBufferPointer<UInt8>) -> Step
    ) -> Result<[UInt8], CeleryProtocolError> {
        var output: [UInt8] = []
        var room = 16_384
        while true {
            let start = output.count
            room = min(room, limit - start)
            guard room > 0 else { return .failure(method.failure("it grows beyond \(limit) bytes")) }
            output.append(contentsOf: repeatElement(0, count: room))
            let result = output.withUnsafeMutableBufferPointer { buffer in
                step(UnsafeMutableBufferPointer(rebasing: buffer[start...]))
            }
            switch result {
            case .more(let written):
                output.removeSubrange((start + written)...)
                room = min(room * 2, 4 << 20)
            case .end(let written):
                output.removeSubrange((start + written)...)
                return .success(output)
            case .failed(let what):
                return .failure(method.failure(what))
            }
        }
    }
}
