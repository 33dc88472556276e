import ArgumentParser
import CeleryWorker

/// The broker and result backend URLs as the worker and the client commands settle them, Celery's way: a flag, then
/// the environment (`CELERY_BROKER_URL`, `CELERY_RESULT_BACKEND`), then the settings file; Sentinel's master and
/// `sentinel_kwargs` from the transport options; TLS from the URL and `broker_use_ssl` / `redis_backend_use_ssl`.
struct SettledURLs {
    var broker: RedisURL
    var backend: RedisURL?
    /// The backend's setting as written, a URL (`nil` for none, or for Celery's `redis` alias).
    var backendSetting: String?
    /// kombu's and Celery's TLS warnings, to print at start.
    var warnings: [String] = []

    init(broker brokerFlag: String?, backend backendFlag: String?, file: CelerySettings, environment: [String: String]) throws {
        let brokerText = try Self.brokerText(flag: brokerFlag, file: file, environment: environment)
        var backendText = [backendFlag, environment["CELERY_RESULT_BACKEND"], file.resultBackend].compactMap { $0 }.first { !$0.isEmpty }
        backendSetting = backendText == "redis" ? nil : backendText
        if backendText == "redis" {
            // Celery's backend alias: the address is all in `redis_*`, `redis_db` included.
            backendText = RedisURL.completing("redis://", with: file.backendParts)
        } else {
            var parts = file.backendParts
            parts.database = nil  // a URL's database is its path, or 0
            backendText = backendText.map { RedisURL.completing($0, with: parts) }
        }
        broker = try Self.broker(brokerText, file: file, warnings: &warnings)
        do {
            backend = try backendText.map { text throws(CeleryWorkerError) in try RedisURL(parsing: text) }
        } catch {
            throw ValidationError(error.message)
        }
        if backend?.failover != nil {
            throw ValidationError(
                "The result backend is one Redis server (Celery's Redis backend takes no failover list): give it one URL, not several joined by ';'.")
        }
        backend?.clientName = file.backendClientName
        backend?.useSentinel(master: file.resultSentinelMaster, options: file.resultSentinelOptions)
        if case .sentinel? = backend?.endpoint, backend?.sentinelMaster == nil {
            throw ValidationError(
                "A sentinel:// result backend needs the master's name: result_backend_transport_options: {master_name: …} in --config.")
        }
        do {
            if let warning = try backend?.settleBackendTLS(configured: file.backendTLS) { warnings.append(warning) }
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// A broker's URL with the settings that apply to every connection to a broker: its client name, the Sentinel
    /// master and `sentinel_kwargs` of the transport options, and TLS from the URL and `broker_use_ssl` (whose warning,
    /// if any, goes to `warnings`).
    static func broker(_ text: String, file: CelerySettings, warnings: inout [String]) throws -> RedisURL {
        var broker: RedisURL
        do {
            broker = try RedisURL(parsing: text)
        } catch {
            throw ValidationError(error.message)
        }
        broker.clientName = file.brokerClientName
        if let strategy = file.brokerFailoverStrategy { broker.failover?.strategy = strategy }
        // kombu's Sentinel transport names the master in the transport options, not in the URL.
        broker.useSentinel(master: file.brokerSentinelMaster, options: file.brokerSentinelOptions)
        if case .sentinel = broker.endpoint, broker.sentinelMaster == nil {
            throw ValidationError("A sentinel:// broker needs the master's name: broker_transport_options: {master_name: …} in --config.")
        }
        do {
            if let warning = try broker.settleBrokerTLS(configured: file.brokerTLS) { warnings.append(warning) }
        } catch {
            throw ValidationError(error.message)
        }
        return broker
    }

    /// Celery's broker: `--broker`, else `broker_read_url` (`CELERY_BROKER_READ_URL`), else `CELERY_BROKER_URL`,
    /// `broker_url` or `broker_host`, with `broker_port`, `broker_user`, `broker_password` and `broker_vhost` filling in
    /// what it leaves out. The worker reads and writes through one broker: a `broker_write_url` that names another is
    /// refused.
    static func brokerText(flag: String?, file: CelerySettings, environment: [String: String]) throws -> String {
        if let flag { return RedisURL.completing(flag, with: file.brokerParts) }
        let main = environment["CELERY_BROKER_URL"] ?? file.brokerURL ?? file.brokerHost
        let read = (environment["CELERY_BROKER_READ_URL"] ?? file.brokerReadURL ?? main).map { RedisURL.completing($0, with: file.brokerParts) }
        let write = (environment["CELERY_BROKER_WRITE_URL"] ?? file.brokerWriteURL ?? main).map { RedisURL.completing($0, with: file.brokerParts) }
        if let read, let write, read != write {
            throw ValidationError(
                "broker_read_url and broker_write_url name two brokers (\(RedisURL.masked(read)), \(RedisURL.masked(write))): "
                    + "the Swift worker reads and writes through one broker; give it one broker_url.")
        }
        return read ?? write ?? "redis://localhost:6379/0"
    }
}
