"""The IoT Hub query language: one expression grammar for routes, target conditions and twin queries."""

from edb_local.hub.query.evaluate import UNDEFINED, evaluate, lookup_path, matches
from edb_local.hub.query.expr import Node, QuerySyntaxError, parse_expression

__all__ = ["UNDEFINED", "Node", "QuerySyntaxError", "evaluate", "lookup_path", "matches", "parse_expression"]
