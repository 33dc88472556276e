import CeleryProtocol
import OrderedCollections

/// Celery's event dumper (`celery.events.dumper.Dumper`, what `celery events --dump` prints): one line per event, as
/// Python writes it.
///
/// ```text
/// celery@host [2026-12-06 16:00:01.250000+00:00] started: clock=1, freq=2.0, local_received=…, pid=42, …
/// celery@host [2026-12-06 16:00:02.100000+00:00] task received: tasks.add(<id>) args=(2, 3) kwargs={} clock=5, …
/// ```
///
/// The host, the event's time in UTC, its type made readable (`worker-online` is `started`, `worker-heartbeat`
/// `heartbeat`, `worker-offline` `shutdown`, `task-succeeded` `task succeeded`), and every other field as `key=value`
/// in key order, values as Python's `str` writes them. A task event names its task as the `task-received` or
/// `task-sent` event of the same id named it, remembered for the last 4095 tasks as Celery's `LRUCache` does.
/// Feed it the events as ``EventReception`` makes them (with `local_received`).
public struct EventDump: Sendable {
    /// Celery's `TASK_NAMES`: `name(id) args=… kwargs=…` by task id, least recently used first.
    private var taskNames: OrderedDictionary<String, String> = [:]
    /// Celery's limit on `TASK_NAMES` (`0xFFF`).
    static let taskNameLimit = 0xFFF

    public init() {}

    /// The line Celery's dumper prints for `event`; `nil` when a field the line needs is missing (`timestamp`, `type`
    /// or `hostname`; `uuid` of a task event; `name`, `args` and `kwargs` of a `task-received` or `task-sent`), where
    /// Python's dumper raises `KeyError`, or when its `timestamp` is not a number.
    public mutating func line(for event: CeleryObject) -> String? {
        var fields = event
        guard let stamp = fields.removeValue(forKey: "timestamp")?.doubleValue, stamp.isFinite,
            let rawType = fields.removeValue(forKey: "type"), let hostname = fields.removeValue(forKey: "hostname")
        else { return nil }
        let type = PythonRepr.str(rawType).lowercased()
        // `str(datetime.fromtimestamp(timestamp, timezone.utc))`: isoformat with a space.
        let time = CeleryTimestamp.isoformat(unixSeconds: stamp).replacing("T", with: " ")
        let head = "\(PythonRepr.str(hostname)) [\(time)] \(Self.humanized(type))"
        // Python's `f'{…}{sep} {fields}'` and `f'{…}{sep} {task} {fields}'`: the colon only with fields, the spaces
        // always.
        guard type.hasPrefix("task-") else {
            let list = Self.fieldList(fields)
            return head + (list.isEmpty ? " " : ": ") + list
        }
        guard let uuid = fields.removeValue(forKey: "uuid") else { return nil }
        let id = PythonRepr.str(uuid)
        let task: String
        if type == "task-received" || type == "task-sent" {
            guard let name = fields.removeValue(forKey: "name"), let args = fields.removeValue(forKey: "args"),
                let kwargs = fields.removeValue(forKey: "kwargs")
            else { return nil }
            task = "\(PythonRepr.str(name))(\(id)) args=\(PythonRepr.str(args)) kwargs=\(PythonRepr.str(kwargs))"
            remember(task, for: id)
        } else {
            task = recalled(id) ?? ""
        }
        let list = Self.fieldList(fields)
        return head + (list.isEmpty ? " " : ": ") + task + " " + list
    }

    /// `LRUCache.__setitem__`: a new id pushes out the least recently used one at the limit; a known id keeps its
    /// place.
    private mutating func remember(_ task: String, for id: String) {
        if taskNames[id] == nil, taskNames.count >= Self.taskNameLimit { taskNames.removeFirst() }
        taskNames[id] = task
    }

    /// `LRUCache.get`: a known id becomes the most recently used.
    private mutating func recalled(_ id: String) -> String? {
        guard let task = taskNames.removeValue(forKey: id) else { return nil }
        taskNames[id] = task
        return task
    }

    /// `key=value, key=value` in Python's key order (code points).
    static func fieldList(_ fields: CeleryObject) -> String {
        let keys = fields.keys.sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
        return keys.map { "\($0)=\(PythonRepr.str(fields[$0] ?? .null))" }.joined(separator: ", ")
    }

    /// Celery's `humanize_type`.
    static func humanized(_ type: String) -> String {
        switch type {
        case "worker-offline": "shutdown"
        case "worker-online": "started"
        case "worker-heartbeat": "heartbeat"
        default: type.replacing("-", with: " ")
        }
    }
}
