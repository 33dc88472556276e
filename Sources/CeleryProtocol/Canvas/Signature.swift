import OrderedCollections

/// A Celery signature: a task name with its arguments and execution options, as `celery.canvas.Signature` is
/// carried in messages (`callbacks`, `errbacks`, `chain`, `chord` and `link` options):
/// `{"task", "args", "kwargs", "options", "subtask_type", "immutable"}`.
///
/// Groups and chords are signatures too: `celery.group` with `kwargs.tasks`, `celery.chord` with `kwargs.header`
/// and `kwargs.body`, and `subtask_type` `"group"` / `"chord"` (`"chain"` for `celery.chain`).
public struct Signature: Sendable, Hashable {
    public var task: String
    public var args: [CeleryValue]
    public var kwargs: CeleryObject
    /// Execution options: `task_id`, `queue`, `priority`, `countdown`, `link`, `link_error`, `group_id`, …
    public var options: CeleryObject
    /// `nil` for a task; `"chain"`, `"group"` or `"chord"` for canvas primitives.
    public var subtaskType: String?
    /// An immutable signature (`.si()`) ignores its parent's result.
    public var immutable: Bool

    public init(
        task: String, args: [CeleryValue] = [], kwargs: CeleryObject = [:], options: CeleryObject = [:],
        subtaskType: String? = nil, immutable: Bool = false
    ) {
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.subtaskType = subtaskType
        self.immutable = immutable
    }

    /// Reads a signature dict; `nil` when `value` is not one.
    public init?(_ value: CeleryValue) {
        guard case .object(let dict) = value, let task = dict["task"]?.stringValue else { return nil }
        self.task = task
        self.args = dict["args"]?.arrayValue ?? []
        self.kwargs = dict["kwargs"]?.objectValue ?? [:]
        self.options = dict["options"]?.objectValue ?? [:]
        self.subtaskType = dict["subtask_type"]?.stringValue
        self.immutable = dict["immutable"]?.boolValue ?? false
    }

    /// The dict form, in Celery's key order.
    public var value: CeleryValue {
        [
            "task": .string(task), "args": .array(args), "kwargs": .object(kwargs), "options": .object(options),
            "subtask_type": subtaskType.map(CeleryValue.string) ?? .null, "immutable": .bool(immutable),
        ]
    }

    /// The signatures in a list value (`callbacks`, `errbacks`, `chain`, `link`): a single dict counts as a list of
    /// one; anything that is not a signature is skipped.
    public static func list(_ value: CeleryValue?) -> [Signature] {
        switch value {
        case .array(let items)?: return items.compactMap(Signature.init)
        case let single?: return Signature(single).map { [$0] } ?? []
        case nil: return []
        }
    }

    // MARK: Canvas

    /// A group of signatures (`celery.group`), run in parallel.
    public static func group(_ tasks: [Signature], options: CeleryObject = [:]) -> Signature {
        Signature(
            task: "celery.group", kwargs: ["tasks": .array(tasks.map(\.value))], options: options, subtaskType: "group")
    }

    /// A chord: the `header` tasks in parallel, then `body` with the list of their results.
    public static func chord(_ header: [Signature], body: Signature, options: CeleryObject = [:]) -> Signature {
        Signature(
            task: "celery.chord",
            kwargs: ["kwargs": [:], "header": group(header).value, "body": body.value], options: options,
            subtaskType: "chord")
    }

    /// A chain (`celery.chain`): each task gets the previous one's result as its first argument.
    public static func chain(_ tasks: [Signature], options: CeleryObject = [:]) -> Signature {
        Signature(
            task: "celery.chain", kwargs: ["tasks": .array(tasks.map(\.value))], options: options, subtaskType: "chain")
    }

    /// The members of a group or chain signature.
    public var tasks: [Signature] { Signature.list(kwargs["tasks"]) }

    /// A chord's header members and body.
    public var chordParts: (header: [Signature], body: Signature)? {
        guard subtaskType == "chord", let body = kwargs["body"].flatMap(Signature.init) else { return nil }
        let header = kwargs["header"].flatMap(Signature.init)
        return (header?.tasks ?? Signature.list(kwargs["header"]), body)
    }
}
