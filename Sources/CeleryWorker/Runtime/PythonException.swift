import CeleryProtocol

/// An error that says which Python exception a Python reader of the result should see.
///
/// Conform your own error types to choose the Python class; any other Swift error is stored with its Swift type
/// name as `exc_type` and `exc_module` `"swift"`, which Python rebuilds as an `Exception` subclass of that name.
public protocol PythonConvertibleError: Error {
    /// The exception as it is stored in the result.
    var pythonException: CeleryExceptionInfo { get }
}

/// A Python exception raised from Swift: `throw PythonException.valueError("bad input")`.
public struct PythonException: PythonConvertibleError, Sendable, CustomStringConvertible {
    public var pythonException: CeleryExceptionInfo

    /// An exception of class `module.type` with `arguments` as its `args`.
    public init(type: String, module: String = "builtins", arguments: [CeleryValue]) {
        self.pythonException = CeleryExceptionInfo(type: type, arguments: arguments, module: module)
    }

    /// An exception of class `module.type` with a single message argument.
    public init(type: String, module: String = "builtins", message: String) {
        self.init(type: type, module: module, arguments: [.string(message)])
    }

    /// Python's `ValueError(message)`.
    public static func valueError(_ message: String) -> PythonException {
        PythonException(type: "ValueError", message: message)
    }

    /// Python's `TypeError(message)`: wrong or missing arguments.
    public static func typeError(_ message: String) -> PythonException {
        PythonException(type: "TypeError", message: message)
    }

    /// Python's `KeyError(key)`.
    public static func keyError(_ key: String) -> PythonException {
        PythonException(type: "KeyError", message: key)
    }

    /// Python's `RuntimeError(message)`.
    public static func runtimeError(_ message: String) -> PythonException {
        PythonException(type: "RuntimeError", message: message)
    }

    /// Celery's `NotRegistered(name)`.
    public static func notRegistered(_ name: String) -> PythonException {
        PythonException(type: "NotRegistered", module: "celery.exceptions", message: name)
    }

    public var description: String { pythonException.repr }
}

extension CeleryExceptionInfo {
    /// How a Swift error is stored: its own Python class if it names one, else its Swift type name in module
    /// `swift` with its description as the message. Argument conversion errors become Python's `TypeError`, a value
    /// the serializer cannot write kombu's `EncodeError`.
    public init(error: any Error) {
        switch error {
        case let convertible as any PythonConvertibleError:
            self = convertible.pythonException
        case let conversion as CeleryValueConversionError:
            self.init(type: "TypeError", arguments: [.string(conversion.description)], module: "builtins")
        case let failure as CeleryWorkerError where failure.code == .encodeError:
            self = .encodeError(wrapping: failure.message)
        default:
            self.init(
                type: String(describing: Swift.type(of: error)), arguments: [.string(String(describing: error))],
                module: "swift")
        }
    }
}

extension CeleryExceptionInfo {
    /// kombu's `EncodeError`, which wraps the serializer's error (`OverflowError('…')`): stored with that error's repr
    /// as its argument, shown with it unquoted (``raisedRepr``), as Python shows the raised exception.
    static func encodeError(wrapping wrapped: String) -> CeleryExceptionInfo {
        var exception = CeleryExceptionInfo(type: "EncodeError", arguments: [.string(wrapped)], module: "kombu.exceptions")
        exception.raisedRepr = "EncodeError(\(wrapped))"
        return exception
    }
}
