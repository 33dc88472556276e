"""A typed, lossless JSON form of Python values, so Swift tests can compare what they decode with what Python sent."""
import base64


def typed(value):
    if value is None:
        return {"null": None}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, str):
        return {"str": value}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (list, tuple)):
        return {"list": [typed(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[str(k), typed(v)] for k, v in value.items()]}
    raise TypeError(f"no typed form for {type(value)!r}")
