import CeleryProtocol

extension WorkerRun {
    /// Celery's embedded beat (`-B`): a ``BeatService`` on the worker's client, writing its schedule file on a task
    /// thread, until the worker's shutdown begins.
    func beatLoop() async {
        guard let beat = configuration.beat, let client = service.client else { return }
        let service = BeatService(
            configuration: beat, client: client, timezone: configuration.timezone, enableUTC: configuration.enableUTC,
            node: configuration.nodeName, logger: logger, signals: signals, embedded: true)
        await service.run(until: shutdown, files: executor)
    }
}
