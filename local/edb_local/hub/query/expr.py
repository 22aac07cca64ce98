"""The IoT Hub query-language expressions: lexer, parser and AST. Pure code.

One grammar serves the three places IoT Hub uses it: route conditions (``WHERE`` of an edgeHub
route), deployment target conditions, and ``SELECT ... FROM devices[.modules] WHERE ...`` queries.
What a bare name means differs (an application property in a route, a twin path in a query), so
the parser produces neutral :class:`Path` nodes and the evaluator asks a resolver.

Grammar (keywords and function names case-insensitive)::

    expr    := or
    or      := and ('OR' and)*
    and     := not ('AND' not)*
    not     := 'NOT' not | compare
    compare := sum (('=' | '!=' | '<>' | '<' | '<=' | '>' | '>=') sum | 'IN' list | 'NIN' list)?
    sum     := product (('+' | '-') product)*
    product := unary (('*' | '/' | '%') unary)*
    unary   := '-' unary | primary
    primary := literal | list | call | path | '(' expr ')'
    path    := name ('.' name)*   where name is an identifier ([A-Za-z_$][A-Za-z0-9_$-]*)
               or '[[any name]]' (as in `configurations.[[deployment-id]].status`)
    literal := 'single' | "double" quoted string | number | true | false | null
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edb_local.hub import errors
from edb_local.hub.errors import HubError

MAX_EXPRESSION_LENGTH = 8192
MAX_DEPTH = 64


class QuerySyntaxError(HubError):
    code = errors.QUERY_INVALID


# ---------------------------------------------------------------------------------------------
# AST


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class ListLiteral:
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Path:
    parts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # upper case
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "NOT" or "-"
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # AND OR = != < <= > >= + - * / % IN NIN
    left: Node
    right: Node


Node = Literal | ListLiteral | Path | Call | Unary | Binary

# ---------------------------------------------------------------------------------------------
# lexer


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # NAME, STRING, NUMBER, OP, EOF
    text: str
    value: Any
    pos: int


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<dbracket>\[\[[^\[\]]+\]\])
  | (?P<name>[A-Za-z_$][A-Za-z0-9_$\-]*)
  | (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*")
  | (?P<op><=|>=|!=|<>|[=<>()+\-*/%,.\[\]])
    """,
    re.VERBOSE,
)

_KEYWORDS = {"AND", "OR", "NOT", "IN", "NIN", "TRUE", "FALSE", "NULL"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "\\": "\\", "'": "'", '"': '"', "/": "/"}


def _unquote(text: str) -> str:
    quote = text[0]
    body = text[1:-1]
    if quote == "'":
        body = body.replace("''", "'")
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2:i + 6]):
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise QuerySyntaxError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise QuerySyntaxError(f"unexpected character {text[pos]!r} at {pos}")
        kind = match.lastgroup
        raw = match.group()
        if kind == "number":
            number: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
            tokens.append(Token("NUMBER", raw, number, pos))
        elif kind == "string":
            tokens.append(Token("STRING", raw, _unquote(raw), pos))
        elif kind == "name":
            tokens.append(Token("NAME", raw, raw, pos))
        elif kind == "dbracket":
            tokens.append(Token("NAME", raw, raw[2:-2].strip(), pos))
        elif kind == "op":
            tokens.append(Token("OP", raw, raw, pos))
        pos = match.end()
    tokens.append(Token("EOF", "", None, len(text)))
    return tokens


# ---------------------------------------------------------------------------------------------
# parser

_COMPARISONS = {"=", "!=", "<>", "<", "<=", ">", ">="}


class TokenCursor:
    """A position in a token list and the one-token look-ahead steps of both parsers: WHERE
    expressions here, and the SELECT ... FROM clauses of twin queries (edb_local.hub.twinquery)."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def next(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "NAME" and token.text.upper() == word and not token.text.startswith("["):
            self.pos += 1
            return True
        return False

    def op(self, symbol: str) -> bool:
        token = self.peek()
        if token.kind == "OP" and token.text == symbol:
            self.pos += 1
            return True
        return False

    def expect_op(self, symbol: str) -> None:
        if not self.op(symbol):
            token = self.peek()
            raise QuerySyntaxError(f"expected {symbol!r} at {token.pos}, found {token.text or 'end'!r}")


class _Parser(TokenCursor):
    def __init__(self, tokens: list[Token]) -> None:
        super().__init__(tokens)
        self.depth = 0

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise QuerySyntaxError("expression nests too deeply")

    def expr(self) -> Node:
        self._enter()
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> Node:
        node = self.and_()
        while self.keyword("OR"):
            node = Binary("OR", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.keyword("AND"):
            node = Binary("AND", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.keyword("NOT"):
            self._enter()
            try:
                return Unary("NOT", self.not_())
            finally:
                self.depth -= 1
        return self.compare()

    def compare(self) -> Node:
        left = self.sum()
        token = self.peek()
        if token.kind == "OP" and token.text in _COMPARISONS:
            self.pos += 1
            op = "!=" if token.text == "<>" else token.text
            return Binary(op, left, self.sum())
        for word in ("IN", "NIN"):
            if self.keyword(word):
                return Binary(word, left, self.list_())
        return left

    def sum(self) -> Node:
        node = self.product()
        while True:
            token = self.peek()
            if token.kind == "OP" and token.text in ("+", "-"):
                self.pos += 1
                node = Binary(token.text, node, self.product())
            else:
                return node

    def product(self) -> Node:
        node = self.unary()
        while True:
            token = self.peek()
            if token.kind == "OP" and token.text in ("*", "/", "%"):
                self.pos += 1
                node = Binary(token.text, node, self.unary())
            else:
                return node

    def unary(self) -> Node:
        if self.op("-"):
            self._enter()
            try:
                return Unary("-", self.unary())
            finally:
                self.depth -= 1
        return self.primary()

    def list_(self) -> ListLiteral:
        self.expect_op("[")
        items: list[Any] = []
        if not self.op("]"):
            while True:
                node = self.unary()
                if not isinstance(node, Literal):
                    raise QuerySyntaxError("list items must be literals")
                items.append(node.value)
                if self.op("]"):
                    break
                self.expect_op(",")
        return ListLiteral(tuple(items))

    def primary(self) -> Node:
        token = self.peek()
        if token.kind == "NUMBER":
            self.pos += 1
            return Literal(token.value)
        if token.kind == "STRING":
            self.pos += 1
            return Literal(token.value)
        if token.kind == "OP" and token.text == "(":
            self.pos += 1
            node = self.expr()
            self.expect_op(")")
            return node
        if token.kind == "OP" and token.text == "[":
            return self.list_()
        if token.kind == "NAME":
            upper = token.text.upper()
            plain = not token.text.startswith("[")
            if plain and upper in ("TRUE", "FALSE", "NULL"):
                self.pos += 1
                return Literal({"TRUE": True, "FALSE": False, "NULL": None}[upper])
            if plain and upper in _KEYWORDS:
                raise QuerySyntaxError(f"unexpected keyword {token.text!r} at {token.pos}")
            self.pos += 1
            if plain and self.op("("):
                args: list[Node] = []
                if not self.op(")"):
                    while True:
                        args.append(self.expr())
                        if self.op(")"):
                            break
                        self.expect_op(",")
                return Call(upper, tuple(args))
            parts = [token.value]
            while self.op("."):
                part = self.next()
                if part.kind != "NAME":
                    raise QuerySyntaxError(f"expected a property name after '.' at {part.pos}")
                parts.append(part.value)
            return Path(tuple(parts))
        raise QuerySyntaxError(f"unexpected {token.text or 'end of expression'!r} at {token.pos}")


def parse_expression(text: str) -> Node:
    parser = _Parser(tokenize(text))
    node = parser.expr()
    token = parser.peek()
    if token.kind != "EOF":
        raise QuerySyntaxError(f"unexpected {token.text!r} at {token.pos}")
    return node


def parse_prefix(tokens: list[Token], start: int) -> tuple[Node, int]:
    """Parse one expression from ``tokens[start:]``; return it and the index after it."""
    parser = _Parser(tokens)
    parser.pos = start
    return parser.expr(), parser.pos
