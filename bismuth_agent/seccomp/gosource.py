"""Evaluating the small part of Go that containerd's default seccomp profile is written in.

containerd ships its default profile as Go code (``contrib/seccomp/seccomp_default.go``): a
function that builds the profile from the spec's capabilities and the build's ``GOARCH``.
:class:`GoFile` tokenizes such a file and :meth:`GoFile.call` runs one of its functions with
given inputs, so the profile is derived from the source, not copied by hand. Understood:
``x := e``, ``a, b := e``, ``x = e`` (also on a field), ``if [init;] cond {...} [else {...}]``,
``switch e { case a, b: ... default: ... }``, ``for _, v := range e {...}``, ``return e``;
expressions of literals, names, selectors, calls, composite literals (structs, slices),
``&``, ``!``, ``|``, ``==`` and ``!=``. Names the file does not define come from
``Environment`` (constants, package functions, the arguments). Anything else is a
:class:`GoSourceError` naming where: the source changed beyond what this reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:\\.|[^"\\])*"|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+|\d+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>:=|==|!=|&&|\|\||[{}()\[\],:;.=&|!*])
    """,
    re.S | re.X,
)


class GoSourceError(Exception):
    """The Go source holds something this evaluator does not understand."""


@dataclass
class Struct:
    """A Go struct value: its type name (without package) and fields by Go name."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Environment:
    """What the evaluated code sees besides its own file."""

    values: Mapping[str, Any]  # "runtime.GOARCH", "specs.ActAllow", "sp.Process...", ...
    functions: Mapping[str, Callable[..., Any]]  # "kernelversion.GreaterEqualThan", ...


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise GoSourceError(f"line {line}: unexpected {text[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


class GoFile:
    """One Go source file whose top-level functions can be called."""

    def __init__(self, text: str, env: Environment) -> None:
        self.tokens = tokenize(text)
        self.env = env
        self.functions = self._find_functions()

    def _find_functions(self) -> dict[str, int]:
        """Function name -> index of the ``{`` that opens its body."""
        found = {}
        for i, (kind, value) in enumerate(self.tokens):
            if kind == "name" and value == "func" and self.tokens[i + 1][0] == "name":
                j = i + 2
                depth = 0
                while not (self.tokens[j][1] == "{" and depth == 0):
                    depth += {"(": 1, ")": -1}.get(self.tokens[j][1], 0)
                    j += 1
                found[self.tokens[i + 1][1]] = j
        return found

    def call(self, name: str, **arguments: Any) -> Any:
        if name not in self.functions:
            raise GoSourceError(f"no function {name}")
        run = _Run(self, self.functions[name], dict(arguments))
        try:
            run.block()
        except _Return as done:
            return done.value
        return None


class _Run:
    """Executes statements from a token position (one function call)."""

    def __init__(self, file: GoFile, start: int, scope: dict[str, Any]) -> None:
        self.file, self.tokens, self.pos, self.scope = file, file.tokens, start, scope

    # --- tokens ---------------------------------------------------------------------------

    def peek(self, offset: int = 0) -> str:
        return self.tokens[self.pos + offset][1]

    def take(self, expected: str | None = None) -> str:
        value = self.tokens[self.pos][1]
        if expected is not None and value != expected:
            raise GoSourceError(f"expected {expected!r}, found {value!r} (token {self.pos})")
        self.pos += 1
        return value

    def skip_block(self) -> None:
        depth = 0
        while True:
            value = self.take()
            depth += {"{": 1, "}": -1}.get(value, 0)
            if depth == 0:
                return

    # --- statements -----------------------------------------------------------------------

    def block(self, run: bool = True) -> None:
        if not run:
            self.skip_block()
            return
        self.take("{")
        while self.peek() != "}":
            self.statement()
        self.take("}")

    def statement(self) -> None:
        word = self.peek()
        if word == "if":
            self.if_statement()
        elif word == "switch":
            self.switch_statement()
        elif word == "for":
            self.for_statement()
        elif word == "return":
            self.take()
            raise _Return(self.expression())
        else:
            self.simple_statement()
        if self.peek() == ";":
            self.take()

    def simple_statement(self) -> None:
        targets = [self.postfix(composite=False, evaluate=False)]
        while self.peek() == ",":
            self.take()
            targets.append(self.postfix(composite=False, evaluate=False))
        op = self.take()
        if op not in (":=", "="):
            raise GoSourceError(f"unsupported statement near token {self.pos}: {op!r}")
        value = self.expression()
        values = list(value) if len(targets) > 1 else [value]
        for target, item in zip(targets, values, strict=True):
            self.assign(target, item)

    def assign(self, target: tuple[str, ...], value: Any) -> None:
        if len(target) == 1:
            if target[0] != "_":
                self.scope[target[0]] = value
            return
        holder = self.scope[target[0]]
        for name in target[1:-1]:
            holder = holder.fields[name]
        holder.fields[target[-1]] = value

    def if_statement(self) -> None:
        self.take("if")
        if self._has_init():
            self.simple_statement()
            self.take(";")
        condition = self.expression(composite=False)
        self.block(run=bool(condition))
        if self.peek() == "else":
            self.take()
            if self.peek() == "if":
                if condition:
                    self.take("if")
                    self._skip_to_block()
                    self.skip_block()
                    return
                self.if_statement()
            else:
                self.block(run=not condition)

    def _has_init(self) -> bool:
        """Whether the header holds an init statement (a ``;`` outside parentheses)."""
        depth, at = 0, self.pos
        while True:
            value = self.tokens[at][1]
            depth += {"(": 1, ")": -1}.get(value, 0)
            if depth == 0 and value in (";", "{"):
                return value == ";"
            at += 1

    def _skip_to_block(self) -> None:
        while self.peek() != "{":
            self.pos += 1

    def switch_statement(self) -> None:
        self.take("switch")
        subject = self.expression(composite=False)
        self.take("{")
        cases: list[tuple[list[Any] | None, int]] = []
        while self.peek() != "}":
            if self.take() == "default":
                labels = None
            else:
                labels = [self.expression()]
                while self.peek() == ",":
                    self.take()
                    labels.append(self.expression())
            self.take(":")
            cases.append((labels, self.pos))
            self._skip_case_body()
        end = self.pos
        chosen = next((at for labels, at in cases if labels and subject in labels), None)
        if chosen is None:
            chosen = next((at for labels, at in cases if labels is None), None)
        if chosen is not None:
            self.pos = chosen
            while self.peek() not in ("case", "default", "}"):
                self.statement()
        self.pos = end
        self.take("}")

    def _skip_case_body(self) -> None:
        depth = 0
        while depth > 0 or self.peek() not in ("case", "default", "}"):
            depth += {"{": 1, "}": -1, "(": 1, ")": -1}.get(self.take(), 0)

    def for_statement(self) -> None:
        self.take("for")
        key, _ = self.take(), self.take(",")
        name = self.take()
        self.take(":=")
        self.take("range")
        items = self.expression(composite=False)
        body = self.pos
        for index, item in enumerate(items):
            self.pos = body
            if key != "_":
                self.scope[key] = index
            self.scope[name] = item
            self.block()
        if not items:
            self.skip_block()

    # --- expressions ----------------------------------------------------------------------

    def expression(self, composite: bool = True) -> Any:
        left = self.unary(composite)
        while self.peek() in ("|", "==", "!="):
            op = self.take()
            right = self.unary(composite)
            operations = {"|": lambda a, b: a | b, "==": lambda a, b: a == b}
            left = operations.get(op, lambda a, b: a != b)(left, right)
        return left

    def unary(self, composite: bool) -> Any:
        if self.peek() == "!":
            self.take()
            return not self.unary(composite)
        if self.peek() == "&":
            self.take()  # a pointer to the value: the value itself here
        return self.postfix(composite)

    def postfix(self, composite: bool = True, evaluate: bool = True) -> Any:
        """A primary with selectors, calls and a composite literal body; with
        ``evaluate=False`` the dotted name itself (an assignment target)."""
        kind, value = self.tokens[self.pos]
        if kind == "string":
            self.pos += 1
            return value[1:-1].encode().decode("unicode_escape")
        if kind == "number":
            self.pos += 1
            return int(value, 0)
        if value == "[":
            return self.composite(self.type_name())
        names = [self.take()]
        while self.peek() == "." and self.tokens[self.pos + 1][0] == "name":
            self.take(".")
            names.append(self.take())
        if not evaluate:
            return tuple(names)
        if self.peek() == "(":
            return self.call(".".join(names))
        if self.peek() == "{" and composite:
            return self.composite(".".join(names))
        return self.lookup(names)

    def type_name(self) -> str:
        text = ""
        while self.peek() != "{":
            text += self.take()
        return text

    def composite(self, type_name: str) -> Any:
        self.take("{")
        keyed: dict[str, Any] = {}
        items: list[Any] = []
        while self.peek() != "}":
            if self.tokens[self.pos][0] == "name" and self.peek(1) == ":":
                key = self.take()
                self.take(":")
                keyed[key] = self.expression()
            elif self.peek() == "{" and type_name.startswith("[]"):
                items.append(self.composite(type_name[2:]))  # the element's type, elided
            else:
                items.append(self.expression())
            if self.peek() == ",":
                self.take()
        self.take("}")
        if type_name.startswith("[]"):
            return items
        return Struct(type_name.rsplit(".", 1)[-1], keyed)

    def call(self, name: str) -> Any:
        self.take("(")
        args = []
        while self.peek() != ")":
            args.append(self.expression())
            if self.peek() == ",":
                self.take()
        self.take(")")
        if name == "append":
            return [*args[0], *args[1:]]
        if name in ("uint", "uint64"):
            return int(args[0])
        if name in self.file.functions:
            return self.file.call(name)
        if name in self.file.env.functions:
            return self.file.env.functions[name](*args)
        raise GoSourceError(f"call of unknown function {name}")

    def lookup(self, names: list[str]) -> Any:
        if names[0] in self.scope:
            value = self.scope[names[0]]
            for name in names[1:]:
                value = value.fields[name]
            return value
        dotted = ".".join(names)
        builtins = {"nil": None, "true": True, "false": False}
        if dotted in builtins:
            return builtins[dotted]
        if dotted in self.file.env.values:
            return self.file.env.values[dotted]
        raise GoSourceError(f"unknown name {dotted}")
