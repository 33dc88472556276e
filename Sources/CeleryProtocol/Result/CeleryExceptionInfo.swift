/// An exception as Celery's result backend encodes it: `{"exc_type", "exc_message", "exc_module"}`.
///
/// A Python reader rebuilds the real class when `module` is already imported there (`builtins`,
/// `celery.exceptions`, `billiard.exceptions`, …), and otherwise a synthesized `Exception` subclass named ``type``.
public struct CeleryExceptionInfo: Sendable, Hashable {
    /// The class name (`__qualname__`), such as `ValueError`.
    public var type: String
    /// The exception's `args`.
    public var arguments: [CeleryValue]
    /// The class's module (`__module__`), such as `builtins`.
    public var module: String
    /// Python's `repr` of the raised exception where its stored arguments show it otherwise: kombu's `EncodeError`
    /// wraps an exception, which the backend stores as its repr (`EncodeError(OverflowError('…'))` is stored with the
    /// argument `"OverflowError('…')"`). `nil`: ``repr`` is built from ``arguments``. Not stored.
    public var raisedRepr: String?

    public init(type: String, arguments: [CeleryValue], module: String) {
        self.type = type
        self.arguments = arguments
        self.module = module
    }

    /// Reads the stored form (a FAILURE document's `result`, a pool child's exception), as Python's
    /// `exception_to_python` does: an `exc_message` that is not a list is the single argument. Missing fields give
    /// `Exception` in `builtins` without arguments.
    public init(stored value: CeleryValue?) {
        let arguments: [CeleryValue]
        switch value?["exc_message"] {
        case .array(let list)?: arguments = list
        case nil, .null?: arguments = []
        case let single?: arguments = [single]
        }
        self.init(
            type: value?["exc_type"]?.stringValue ?? "Exception", arguments: arguments,
            module: value?["exc_module"]?.stringValue ?? "builtins")
    }

    /// The encoded form stored as a FAILURE/RETRY/REVOKED document's `result`.
    public var value: CeleryValue {
        ["exc_type": .string(type), "exc_message": .array(arguments), "exc_module": .string(module)]
    }

    /// Python's `repr(exc)`, as in `ValueError('bad input')`.
    public var repr: String { raisedRepr ?? type + PythonRepr.tuple(arguments).replacingTrailingComma() }

    /// Python's `str(exc)`: the single argument, or the tuple of arguments.
    public var text: String {
        switch arguments.count {
        case 0: return ""
        case 1:
            if case .string(let text) = arguments[0] { return text }
            return PythonRepr.repr(arguments[0])
        default: return PythonRepr.tuple(arguments)
        }
    }

    /// The last line of a Python traceback for this exception (`ValueError: bad input`).
    public var tracebackLine: String {
        let qualified = module == "builtins" ? type : "\(module).\(type)"
        let message = text
        return message.isEmpty ? qualified : "\(qualified): \(message)"
    }
}

extension String {
    /// `('a',)` → `('a')`: an exception's repr shows a single argument without the tuple comma.
    fileprivate func replacingTrailingComma() -> String {
        hasSuffix(",)") ? String(dropLast(2)) + ")" : self
    }
}
