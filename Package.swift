// swift-tools-version:6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("NonisolatedNonsendingByDefault"),
]

let package = Package(
    name: "swift-celery-worker",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "CeleryProtocol", targets: ["CeleryProtocol"]),
        .library(name: "CeleryWorker", targets: ["CeleryWorker"]),
        .library(name: "CeleryWorkerCommand", targets: ["CeleryWorkerCommand"]),
        .executable(name: "swift-celery-worker", targets: ["swift-celery-worker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // TLS to Redis, with OpenSSL 3 loaded only when a connection asks for TLS (the headers come from libssl-dev).
        .target(
            name: "COpenSSL",
            linkerSettings: [.linkedLibrary("dl")]
        ),
        // Celery's worker_redirect_stdouts: the C library's stdout stream replaced by one that hands lines to the log.
        .target(name: "CStandardOutput"),
        .systemLibrary(
            name: "CMsgpack",
            pkgConfig: "msgpack",
            providers: [.apt(["libmsgpack-dev"])]
        ),
        // kombu's compressions: zlib, bzip2 and lzma linked (zlib1g-dev, libbz2-dev, liblzma-dev); brotli and zstd
        // loaded only when a message or a setting asks for them (the headers come from libbrotli-dev and libzstd-dev).
        .target(
            name: "CCompression",
            linkerSettings: [.linkedLibrary("z"), .linkedLibrary("bz2"), .linkedLibrary("lzma"), .linkedLibrary("dl")]
        ),
        .target(
            name: "CeleryProtocol",
            dependencies: [
                "CMsgpack",
                "CCompression",
                .product(name: "OrderedCollections", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CeleryWorker",
            dependencies: [
                "CeleryProtocol",
                "CHiredis",
                "COpenSSL",
                "CStandardOutput",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The `swift-celery-worker` program (worker, beat and the operator commands) as a library: a program of yours
        // registers its tasks and hands them to `CeleryWorkerProgram.main(tasks:)`, as the bundled one does.
        .target(
            name: "CeleryWorkerCommand",
            dependencies: [
                "CeleryWorker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "swift-celery-worker",
            dependencies: [
                "CeleryProtocol",
                "CeleryWorker",
                "CeleryWorkerCommand",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "codec-benchmark",
            dependencies: ["CeleryProtocol"],
            path: "Benchmarks/CodecBenchmark",
            exclude: ["malloc-count.c"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CeleryProtocolTests",
            dependencies: ["CeleryProtocol"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CeleryWorkerTests",
            dependencies: [
                "CeleryWorker", "CeleryProtocol",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
