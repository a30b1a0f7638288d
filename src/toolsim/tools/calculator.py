"""An exact calculator: a small ``ast`` walker over ``fractions.Fraction``.

No library fits: ``simpleeval`` computes decimals in binary floats (``0.1+0.2`` gives
``0.30000000000000004``), ``asteval`` is a whole interpreter, and ``sympy.sympify`` calls
``eval``. So the expression is parsed with ``ast`` and only the node types below are walked;
names, attributes, subscripts, lambdas and keyword arguments never evaluate. Decimal literals
are read from their source text as fractions, so rational arithmetic stays exact; irrational
results (``sqrt(2)``, ``log``, ``sin``) become floats.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from toolsim.tools.base import LiveTool, function_definition, object_schema

Number = Fraction | float

MAX_EXPRESSION_CHARS = 1000
MAX_NODES = 400
MAX_BITS = 20_000
"""Largest numerator or denominator kept (about 6,000 digits): bounds time and the answer."""

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}

_LITERAL_EXPONENT = re.compile(r"[eE]([+-]?\d+)$")

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


class CalculatorError(Exception):
    """Why an expression has no value; its message goes back to the agent."""


def calculator_interface() -> tuple[dict[str, Any], dict[str, Any]]:
    """The definition and output schema (no instance needed: the ToolMaker merges them)."""
    definition = function_definition(
        "calculator",
        "Evaluate an arithmetic expression exactly. Supports + - * / // % ** and "
        "parentheses, sqrt, abs, round, min, max, floor, ceil, log, exp, sin, cos, pi, e. "
        "Fractions stay exact (1/3 + 1/6 = 1/2).",
        {"expression": {"type": "string", "description": "For example (2**10 - 1) / 3."}},
    )
    output_schema = object_schema(
        {
            "result": {"type": "string", "description": "The value; empty on error."},
            "error": {"type": ["string", "null"], "description": "Why there is no value."},
        }
    )
    return definition, output_schema


class Calculator(LiveTool):
    """``{"expression"}`` → ``{"result", "error"}``, exact for rational arithmetic."""

    name = "calculator"

    def __init__(self) -> None:
        self.definition, self.output_schema = calculator_interface()

    async def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        # Microseconds of work, bounded by MAX_BITS, so no thread is needed.
        try:
            return {"result": evaluate(str(arguments["expression"])), "error": None}
        except CalculatorError as exc:
            return {"result": "", "error": str(exc)}


def evaluate(expression: str) -> str:
    """The value of ``expression`` as text; raises ``CalculatorError`` with a reason."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise CalculatorError(f"syntax error: {getattr(exc, 'msg', exc)}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression has more than {MAX_NODES} parts")
    walker = _Walker(expression.strip())
    try:
        value = walker.eval(tree.body)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("result too large") from None
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None
    return format_number(value, prefer_decimal=walker.saw_decimal)


def format_number(value: Number, *, prefer_decimal: bool) -> str:
    """Integers plainly; a decimal when the input was decimal and it terminates; else p/q."""
    if isinstance(value, float):
        return repr(value)
    if value.denominator == 1:
        return str(value.numerator)
    if prefer_decimal:
        decimal = _terminating_decimal(value)
        if decimal is not None:
            return decimal
    return f"{value.numerator}/{value.denominator}"


def _terminating_decimal(value: Fraction) -> str | None:
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return None
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


class _Walker:
    """Evaluates the allowed subset of Python expressions; everything else is an error."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.saw_decimal = False
        self.functions: dict[str, Callable[..., Number]] = {
            "sqrt": _sqrt,
            "abs": abs,
            "round": _round,
            "min": _min,
            "max": _max,
            "floor": lambda x: Fraction(math.floor(x)),
            "ceil": lambda x: Fraction(math.ceil(x)),
            "log": _log,
            "exp": lambda x: _finite(math.exp(x)),
            "sin": lambda x: math.sin(x),
            "cos": lambda x: math.cos(x),
            "tan": lambda x: math.tan(x),
        }

    def eval(self, node: ast.expr) -> Number:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self.eval(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise CalculatorError(f"unknown name {node.id!r}")
        if isinstance(node, ast.Call):
            return self._call(node)
        raise CalculatorError(f"unsupported syntax: {type(node).__name__}")

    def _constant(self, node: ast.Constant) -> Number:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"unsupported literal {node.value!r}")
        if isinstance(node.value, int):
            return _bounded(Fraction(node.value))
        # Read the literal's text, not the float it parsed to: "0.1" is exactly 1/10.
        self.saw_decimal = True
        text = (ast.get_source_segment(self.source, node) or repr(node.value)).replace("_", "")
        exponent = _LITERAL_EXPONENT.search(text)
        # Fraction("1e999999999") would build the whole power of ten before any check.
        if exponent is not None and abs(int(exponent.group(1))) > MAX_BITS // 3:
            raise CalculatorError(f"number too large: {text}")
        try:
            return _bounded(Fraction(text))
        except (ValueError, ZeroDivisionError):
            return node.value

    def _binary(self, node: ast.BinOp) -> Number:
        if isinstance(node.op, ast.BitXor):
            raise CalculatorError("^ is not a power here; use **")
        left, right = self.eval(node.left), self.eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalculatorError(f"unsupported operator {type(node.op).__name__}")
        return _checked(op(left, right))

    def _call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name) or node.func.id not in self.functions:
            raise CalculatorError(
                f"unknown function; available: {', '.join(sorted(self.functions))}"
            )
        if node.keywords:
            raise CalculatorError("keyword arguments are not supported")
        args = [self.eval(arg) for arg in node.args]
        try:
            return _checked(self.functions[node.func.id](*args))
        except TypeError:
            raise CalculatorError(f"wrong number of arguments to {node.func.id}") from None
        except ValueError as exc:
            raise CalculatorError(f"{node.func.id}: {exc}") from None


def _bounded(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise CalculatorError(f"number too large (over {MAX_BITS} bits)")
    return value


def _finite(value: float) -> float:
    if math.isinf(value) or math.isnan(value):
        raise CalculatorError("result is not a finite number")
    return value


def _checked(value: Number) -> Number:
    if isinstance(value, Fraction):
        return _bounded(value)
    if isinstance(value, int):  # floor/ceil/round of a float, min/max of ints
        return _bounded(Fraction(value))
    return _finite(float(value))


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, Fraction) and isinstance(exponent, Fraction):
        if exponent.denominator == 1:
            return _integer_power(base, exponent.numerator)
        root = _exact_root(base, exponent.denominator)
        if root is not None:
            return _integer_power(root, exponent.numerator)
    if base < 0 and not float(exponent).is_integer():
        raise CalculatorError("fractional power of a negative number is not real")
    if base == 0 and exponent < 0:
        raise ZeroDivisionError
    return _finite(math.pow(float(base), float(exponent)))


def _integer_power(base: Fraction, exponent: int) -> Fraction:
    # Check the size before computing: 10**10**9 must be refused, not attempted.
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits > 1 and abs(exponent) * (bits - 1) > MAX_BITS:
        raise CalculatorError(f"result too large (over {MAX_BITS} bits)")
    if base == 0 and exponent < 0:
        raise ZeroDivisionError
    return _bounded(base**exponent)


def _exact_root(value: Fraction, degree: int) -> Fraction | None:
    if value < 0 or degree > 64 or value.numerator.bit_length() > 1000:
        return None
    num, den = _int_root(value.numerator, degree), _int_root(value.denominator, degree)
    if num is None or den is None:
        return None
    return Fraction(num, den)


def _int_root(n: int, degree: int) -> int | None:
    root = math.isqrt(n) if degree == 2 else round(n ** (1 / degree))
    for candidate in (root - 1, root, root + 1):
        if candidate >= 0 and candidate**degree == n:
            return candidate
    return None


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalculatorError("sqrt of a negative number")
    if isinstance(x, Fraction):
        root = _exact_root(x, 2)
        if root is not None:
            return root
    return math.sqrt(x)


def _round(x: Number, ndigits: Number = Fraction(0)) -> Number:
    if not (isinstance(ndigits, Fraction) and ndigits.denominator == 1):
        raise CalculatorError("round: digits must be an integer")
    digits = int(ndigits)
    if abs(digits) > 1000:
        raise CalculatorError("round: too many digits")
    if isinstance(x, float):
        return round(x, digits)
    return Fraction(round(x, digits))


def _min(*args: Number) -> Number:
    if not args:
        raise TypeError
    return min(args)


def _max(*args: Number) -> Number:
    if not args:
        raise TypeError
    return max(args)


def _log(x: Number, base: Number | None = None) -> float:
    if x <= 0 or (base is not None and (base <= 0 or base == 1)):
        raise CalculatorError("log is defined for positive numbers and bases other than 1")
    return math.log(x) if base is None else math.log(x, base)
