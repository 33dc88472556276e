#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Celery's `--uid` / `--gid` (`celery.platforms.maybe_drop_privileges`): a worker started as root becomes the given
/// user and group before it opens its log file, its pid file or any connection, as Celery's does. With a user and
/// no group, the group is the user's own and the user's other groups are kept (`initgroups`); with a group alone,
/// only the group changes. Then, as Celery checks, root must be out of reach.
enum Privileges {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Celery's `check_privileges` warning, when the worker runs as root or with the group `sudo` or `wheel`
    /// (Celery refuses to run so only when it accepts pickle, which this worker never does).
    static var securityWarning: String? {
        let (uid, euid, gid, egid) = (getuid(), geteuid(), getgid(), getegid())
        func groupName(_ id: gid_t) -> String { getgrgid(id).map { String(cString: $0.pointee.gr_name) } ?? "" }
        let risky = [groupName(gid), groupName(egid)].contains { name in name == "sudo" || name == "wheel" }
        guard uid == 0 || euid == 0 || risky else { return nil }
        return "SecurityWarning: You're running the worker with superuser privileges: this is\nabsolutely not recommended!\n\n"
            + "Please specify a different user using the --uid option.\n\nUser information: uid=\(uid) euid=\(euid) gid=\(gid) egid=\(egid)\n"
    }

    /// Celery's `parse_uid`: a number, or a user's name.
    static func userID(_ text: String) throws(Failure) -> uid_t {
        if let number = uid_t(text) { return number }
        guard let entry = getpwnam(text) else { throw Failure(description: "User does not exist: \(text)") }
        return entry.pointee.pw_uid
    }

    /// Celery's `parse_gid`: a number, or a group's name.
    static func groupID(_ text: String) throws(Failure) -> gid_t {
        if let number = gid_t(text) { return number }
        guard let entry = getgrnam(text) else { throw Failure(description: "Group does not exist: \(text)") }
        return entry.pointee.gr_gid
    }

    /// Drops to `user` and `group` (names or numbers), as Celery's worker does before it starts.
    static func drop(user: String?, group: String?) throws(Failure) {
        guard user != nil || group != nil else { return }
        if geteuid() != 0, getuid() == 0 {
            throw Failure(description: "the real user is root but the effective one is not: cannot change user safely")
        }
        let uid = try user.map { text throws(Failure) in try userID(text) }
        var gid = try group.map { text throws(Failure) in try groupID(text) }
        func failed(_ call: String) -> Failure {
            Failure(description: "\(call) failed: \(String(cString: strerror(errno)))")
        }
        if let uid {
            // The user's own group when none is given; the group before the user, or setgid would be refused.
            guard let entry = getpwuid(uid) else { throw Failure(description: "User does not exist: \(uid)") }
            let name = String(cString: entry.pointee.pw_name)
            if gid == nil { gid = entry.pointee.pw_gid }
            guard let gid, setgid(gid) == 0 else { throw failed("setgid") }
            guard initgroups(name, gid) == 0 else { throw failed("initgroups") }
            guard setuid(uid) == 0 else { throw failed("setuid") }
            // Celery's check: root must not be reachable again.
            if setuid(0) == 0 { throw Failure(description: "non-root user able to restore privileges after setuid.") }
        } else if let gid {
            guard setgid(gid) == 0 else { throw failed("setgid") }
        }
        if uid != nil, getuid() == 0, geteuid() == 0 { throw Failure(description: "Still root uid after drop privileges!") }
        if group != nil, getgid() == 0, getegid() == 0 { throw Failure(description: "Still root gid after drop privileges!") }
    }
}
