"""edgeHub routing: the route grammar, route tables from `$edgeHub` desired properties, matching."""

from edb_local.hub.routing.matcher import Delivery, route_message, route_twin_change
from edb_local.hub.routing.routes import UPSTREAM, Route, RouteTable, Sink, Source, parse_edgehub_desired, parse_route

__all__ = ["UPSTREAM", "Delivery", "Route", "RouteTable", "Sink", "Source", "parse_edgehub_desired",
           "parse_route", "route_message", "route_twin_change"]
