import ArgumentParser
import CeleryWorker

/// The broker and result backend URLs as the worker and the client commands settle them, Celery's way: a flag, then
/// the environment (`CELERY_BROKER_URL`, `CELERY_RESULT_BACKEND`), then the settings file; Sentinel's master and
/// `sentinel_kwargs` from the transport options; TLS from the URL and `broker_use_ssl` / `redis_backend_use_ssl`.
struct SettledURLs {
    var broker: RedisURL
    var backend: RedisURL?
    /// kombu's and Celery's TLS warnings, to print at start.
    var warnings: [String] = []

    init(broker brokerFlag: String?, backend backendFlag: String?, file: CelerySettings, environment: [String: String]) throws {
        let brokerText = brokerFlag ?? environment["CELERY_BROKER_URL"] ?? file.brokerURL ?? "redis://localhost:6379/0"
        let backendText = [backendFlag, environment["CELERY_RESULT_BACKEND"], file.resultBackend].compactMap { $0 }.first { !$0.isEmpty }
        do {
            broker = try RedisURL(parsing: brokerText)
            backend = try backendText.map { text throws(CeleryWorkerError) in try RedisURL(parsing: text) }
        } catch {
            throw ValidationError(error.message)
        }
        // kombu's Sentinel transport names the master in the transport options, not in the URL.
        broker.useSentinel(master: file.brokerSentinelMaster, options: file.brokerSentinelOptions)
        backend?.useSentinel(master: file.resultSentinelMaster, options: file.resultSentinelOptions)
        if case .sentinel = broker.endpoint, broker.sentinelMaster == nil {
            throw ValidationError("A sentinel:// broker needs the master's name: broker_transport_options: {master_name: …} in --config.")
        }
        if case .sentinel? = backend?.endpoint, backend?.sentinelMaster == nil {
            throw ValidationError(
                "A sentinel:// result backend needs the master's name: result_backend_transport_options: {master_name: …} in --config.")
        }
        do {
            if let warning = try broker.settleBrokerTLS(configured: file.brokerTLS) { warnings.append(warning) }
            if let warning = try backend?.settleBackendTLS(configured: file.backendTLS) { warnings.append(warning) }
        } catch {
            throw ValidationError(error.message)
        }
    }
}
