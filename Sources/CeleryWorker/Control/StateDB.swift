import CeleryProtocol
import Foundation

/// Celery's `--statedb` (`worker_state_db`): the revoked task ids and the logical clock kept in a file across
/// restarts, so a task revoked before a restart is still not run after it, with or without neighbours to mingle
/// with. The file is the Swift worker's own (JSON: `{"revoked": {id: revoked at, in seconds since the epoch},
/// "clock": n}`), written whole to a new file then renamed over the old one; Python's `shelve` files are not read.
/// Python saves it at shutdown only; the worker also saves it after each `revoke`, so a crash keeps them.
struct StateDB: Sendable {
    let path: String

    /// What the file holds: revoked ids with the wall-clock time of their revocation, and the clock.
    struct Contents: Equatable {
        var revoked: [String: Double] = [:]
        var clock = 0
    }

    /// The file's contents; an empty state when there is no file yet. A file that is not the worker's JSON is an
    /// error that says so.
    func load() throws(CeleryWorkerError) -> Contents {
        let bytes: [UInt8]
        switch FileBytes.read(path) {
        case .success(let read): bytes = read
        case .failure(let error) where error.number == ENOENT: return Contents()
        case .failure(let error): throw CeleryWorkerError(code: .invalidConfiguration, message: "cannot read state db \(path): \(error)")
        }
        guard case .object(let object)? = try? CeleryJSON.decode(bytes) else {
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "state db \(path) is not the Swift worker's JSON state (a Python worker's shelve file cannot be read)")
        }
        var contents = Contents()
        if case .object(let revoked)? = object["revoked"] {
            for (id, time) in revoked { if let time = time.doubleValue { contents.revoked[id] = time } }
        }
        contents.clock = object["clock"]?.intValue ?? 0
        return contents
    }

    /// Writes the state: a new file beside the old, then a rename, so a crash leaves one or the other whole.
    func save(_ contents: Contents) throws(CeleryWorkerError) {
        var revoked = CeleryObject()
        for (id, time) in contents.revoked.sorted(by: { $0.value < $1.value }) { revoked[id] = .double(time) }
        let bytes = CeleryJSON.encode(["revoked": .object(revoked), "clock": .int(Int64(contents.clock))])
        try Self.replace(path, with: bytes, naming: "state db")
    }

    /// Writes `bytes` to a new file beside `path`, then renames it over `path`, so a crash leaves one or the other
    /// whole. `what` names the file in the error.
    static func replace(_ path: String, with bytes: [UInt8], naming what: String) throws(CeleryWorkerError) {
        if case .failure(let reason) = FileBytes.replace(path, with: bytes) {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "cannot write \(what) \(path): \(reason)")
        }
    }
}

extension RevokedTasks {
    /// The ids held now with the wall-clock time each was revoked, for the state file.
    func times(at now: Double = WallClock.now()) -> [String: Double] {
        var times: [String: Double] = [:]
        for id in all(at: now) { times[id] = revokedAt(id) }
        return times
    }
}

extension WorkerRun {
    /// Reads `--statedb` before the worker consumes: its revoked ids (those still within their 3 hours) join the
    /// set, and the clock moves past the saved one. A file that cannot be read is logged and the worker starts
    /// without it.
    func loadState() {
        guard let path = configuration.stateDB else { return }
        do {
            let contents = try StateDB(path: path).load()
            revoked.withLock { set in
                for (id, time) in contents.revoked.sorted(by: { $0.value < $1.value }) { set.insert(id, at: time) }
            }
            service.events?.adjustClock(to: contents.clock)
            logger.info("statedb: loaded \(contents.revoked.count) revoked task ids from \(path)")
        } catch {
            // Not overwritten by the next save, as it would be: it may be a Python worker's shelve file, or another
            // file given by mistake. A Python worker stops there (`dbm.error`), leaving it as it is.
            let aside = path + ".unreadable"
            var status = stat()
            if lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG, rename(path, aside) == 0 {
                logger.error("statedb: \(error.message); moved to \(aside), starting without it")
            } else {
                logger.error("statedb: \(error.message); starting without it")
            }
        }
    }

    /// Writes `--statedb`, on a task thread (a file write blocks); a failure is logged (with `logged`), and its
    /// reason returned.
    @discardableResult
    func saveState(logged: Bool = true) async -> String? {
        guard let path = configuration.stateDB else { return nil }
        let contents = StateDB.Contents(
            revoked: revoked.withLock { $0.times() }, clock: service.events?.currentClock ?? 0)
        let logger = self.logger
        return await withTaskExecutorPreference(executor) {
            do throws(CeleryWorkerError) {
                try StateDB(path: path).save(contents)
                return nil
            } catch {
                if logged { logger.error("statedb: \(error.message)") }
                return error.message
            }
        }
    }
}
