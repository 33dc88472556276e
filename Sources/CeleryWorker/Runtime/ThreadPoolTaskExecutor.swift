import NIOPosix

/// Runs task bodies on a pool of dedicated threads, one per unit of concurrency, so a task that blocks its thread
/// or spins the CPU never occupies the cooperative pool that fetching and result writing run on.
final class ThreadPoolTaskExecutor: TaskExecutor {
    private let pool: NIOThreadPool

    init(threads: Int) {
        pool = NIOThreadPool(numberOfThreads: max(1, threads))
        pool.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        // A job must run even when the pool is stopping, or the task awaiting it would never resume.
        pool.submit { _ in job.runSynchronously(on: executor) }
    }

    func shutdown() async {
        try? await pool.shutdownGracefully()
    }
}
