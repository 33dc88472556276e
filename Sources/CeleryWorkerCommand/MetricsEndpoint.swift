import CeleryWorker
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Serves the worker's metrics in Prometheus' text format at `GET /metrics` (`--metrics-port`), until the
/// worker shuts down. The port is bound by ``bind(registry:host:port:logger:)`` before the worker starts, so a
/// port in use stops the program before it takes any message.
final class MetricsEndpoint: Service {
    let channel: any Channel

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// Throws a system error as its reason alone (`Address already in use (errno 98)`), not NIO's description of it
    /// (`bind(descriptor:ptr:bytes:): Address already in use) (errno: 98)`).
    static func bind(registry: PrometheusCollectorRegistry, host: String, port: Int, logger: Logger) async throws
        -> MetricsEndpoint
    {
        do {
            return try await listen(registry: registry, host: host, port: port, logger: logger)
        } catch let error as IOError {
            throw CeleryWorkerError(
                code: .invalidConfiguration, message: "\(String(cString: strerror(error.errnoCode))) (errno \(error.errnoCode))")
        }
    }

    private static func listen(registry: PrometheusCollectorRegistry, host: String, port: Int, logger: Logger) async throws
        -> MetricsEndpoint
    {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
                }
            }
            .bind(host: host, port: port).get()
        logger.info("Serving metrics on http://\(host):\(channel.localAddress?.port ?? port)/metrics")
        return MetricsEndpoint(channel: channel)
    }

    func run() async throws {
        let channel = self.channel
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
    }
}

/// Answers `GET /metrics` with the registry's text exposition and anything else with 404.
private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var path = ""
    private var keepAlive = false

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            let found = path == "/metrics"
            let body = found ? registry.emitToBuffer() : Array("Not found; try /metrics\n".utf8)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
            headers.add(name: "Content-Length", value: String(body.count))
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            let head = HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
            let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            if !keepAlive {
                let channel = context.channel
                written.whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}
