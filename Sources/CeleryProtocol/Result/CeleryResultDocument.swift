import OrderedCollections

/// A task's result as Celery's key-value backends store it under `celery-task-meta-<id>`.
///
/// Fields are written in Python's order: `status, result, traceback, children, date_done, [group_id],
/// [parent_id], [extended fields], task_id`.
public struct CeleryResultDocument: Sendable {
    /// The fields, in one immutable object that copies share: a document is handed from the task to the settler
    /// and written from a batch, and a copy costs one reference count instead of one per string it holds. A change
    /// makes a new object.
    private var storage: Storage

    private struct Fields: Sendable {
        var status: TaskState
        var result: CeleryValue
        var traceback: String?
        var children: CeleryValue
        var dateDone: String?
        var groupID: String?
        var parentID: String?
        var extended: OrderedDictionary<String, CeleryValue>
        var taskID: String
    }

    private final class Storage: Sendable {
        let fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var fields: Fields {
        get { storage.fields }
        set { storage = Storage(newValue) }
    }

    public var status: TaskState {
        get { storage.fields.status }
        set { fields.status = newValue }
    }
    /// The return value, the custom-state meta, or an encoded exception.
    public var result: CeleryValue {
        get { storage.fields.result }
        set { fields.result = newValue }
    }
    /// A Python-formatted traceback for exceptions raised in the task; `nil` otherwise.
    public var traceback: String? {
        get { storage.fields.traceback }
        set { fields.traceback = newValue }
    }
    /// Results of tasks this task published, each `[["<id>", null], null]`; `null` only in documents written by
    /// the `revoke` command.
    public var children: CeleryValue {
        get { storage.fields.children }
        set { fields.children = newValue }
    }
    /// `isoformat()` of the completion time, for ready states only.
    public var dateDone: String? {
        get { storage.fields.dateDone }
        set { fields.dateDone = newValue }
    }
    public var groupID: String? {
        get { storage.fields.groupID }
        set { fields.groupID = newValue }
    }
    public var parentID: String? {
        get { storage.fields.parentID }
        set { fields.parentID = newValue }
    }
    /// `result_extended` fields (`name`, `args`, `kwargs`, `worker`, `retries`, `queue`), in order.
    public var extended: OrderedDictionary<String, CeleryValue> {
        get { storage.fields.extended }
        set { fields.extended = newValue }
    }
    public var taskID: String {
        get { storage.fields.taskID }
        set { fields.taskID = newValue }
    }

    public init(
        taskID: String, status: TaskState, result: CeleryValue, traceback: String? = nil,
        children: CeleryValue = [], dateDone: String? = nil, groupID: String? = nil, parentID: String? = nil,
        extended: OrderedDictionary<String, CeleryValue> = [:]
    ) {
        storage = Storage(
            Fields(
                status: status, result: result, traceback: traceback, children: children, dateDone: dateDone,
                groupID: groupID, parentID: parentID, extended: extended, taskID: taskID))
    }

    /// The document as an ordered dictionary.
    public var value: CeleryValue {
        var fields = OrderedDictionary<String, CeleryValue>(minimumCapacity: 8 + extended.count)
        fields["status"] = .string(status.rawValue)
        fields["result"] = result
        fields["traceback"] = traceback.map(CeleryValue.string) ?? .null
        fields["children"] = children
        fields["date_done"] = dateDone.map(CeleryValue.string) ?? .null
        if let groupID { fields["group_id"] = .string(groupID) }
        if let parentID { fields["parent_id"] = .string(parentID) }
        for (key, value) in extended { fields[key] = value }
        fields["task_id"] = .string(taskID)
        return .object(fields)
    }

    /// The bytes stored and published: JSON text, or raw msgpack. Fails where msgpack cannot write the document (an
    /// integer beyond 64 bits), as Python's backend raises `EncodeError`; JSON writes every document.
    public func encoded(as serializer: CeleryContentType) throws(CeleryProtocolError) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(256)
        try encode(as: serializer, into: &output)
        return output
    }

    /// Whether `serializer` can write the document: JSON always, msgpack unless it holds an integer beyond 64 bits.
    public func fits(_ serializer: CeleryContentType) -> Bool {
        serializer == .json || (result.fitsMsgpack && children.fitsMsgpack && extended.values.allSatisfy(\.fitsMsgpack))
    }

    /// Appends ``encoded(as:)`` to `output` (nothing when it fails).
    public func encode(as serializer: CeleryContentType, into output: inout [UInt8]) throws(CeleryProtocolError) {
        guard serializer == .json, extended.isEmpty else {
            output.append(contentsOf: try serializer.encode(value))
            return
        }
        // The usual document, written straight out: the same bytes as encoding ``value``, without building it.
        func member(_ key: StaticString, _ value: CeleryValue) {
            output.append(contentsOf: UnsafeBufferPointer(start: key.utf8Start, count: key.utf8CodeUnitCount))
            CeleryJSON.encode(value, into: &output)
        }
        member("{\"status\": ", .string(status.rawValue))
        member(", \"result\": ", result)
        member(", \"traceback\": ", traceback.map(CeleryValue.string) ?? .null)
        member(", \"children\": ", children)
        member(", \"date_done\": ", dateDone.map(CeleryValue.string) ?? .null)
        if let groupID { member(", \"group_id\": ", .string(groupID)) }
        if let parentID { member(", \"parent_id\": ", .string(parentID)) }
        member(", \"task_id\": ", .string(taskID))
        output.append(UInt8(ascii: "}"))
    }

    /// What Celery 5.7 writes in front of a stored result that `result_compression` compressed, followed by the
    /// compression's content type, a NUL byte and the compressed bytes (`celery/backends/base.py`).
    static let compressedMarker = Array("\0celery-compressed\0".utf8)

    /// A stored result (or chord part, or saved group) as Celery 5.7's `result_compression` writes it
    /// (`compress_payload`): the marker, the compression's content type, a NUL byte and the compressed bytes.
    public static func compressedStored(_ encoded: [UInt8], with method: KombuCompression) -> [UInt8] {
        compressedMarker + Array(method.contentType.utf8) + [0] + method.compress(encoded)
    }

    /// Whether stored bytes carry Celery 5.7's marker of a compressed result.
    public static func isCompressedStored(_ bytes: [UInt8]) -> Bool { bytes.starts(with: compressedMarker) }

    /// Decodes a stored result, or a chord part: as Python's `Backend.decode`, decompressed first when it carries
    /// Celery 5.7's marker of a compressed result, whatever this reader's own settings.
    public static func decodeStored(_ bytes: [UInt8], serializer: CeleryContentType) throws(CeleryProtocolError) -> CeleryValue {
        guard bytes.starts(with: compressedMarker) else { return try serializer.decode(bytes) }
        let rest = bytes[compressedMarker.count...]
        guard let end = rest.firstIndex(of: 0) else {
            throw CeleryProtocolError(code: .invalidCompression, message: "a compressed result names no compression")
        }
        let name = String(decoding: rest[..<end], as: UTF8.self)
        guard let method = KombuCompression(name: name) else {
            throw CeleryProtocolError(code: .invalidCompression, message: "a result compressed with '\(name)', which is not supported")
        }
        return try serializer.decode(try method.decompress(rest[(end + 1)...]))
    }

    /// Reads only the `status` of a stored document, for the "never overwrite SUCCESS" rule.
    /// Returns `nil` when the bytes do not decode or carry no status.
    public static func storedStatus(_ bytes: [UInt8], serializer: CeleryContentType) -> TaskState? {
        guard let document = try? decodeStored(bytes, serializer: serializer), case .string(let status)? = document["status"] else {
            return nil
        }
        return TaskState(status)
    }
}
