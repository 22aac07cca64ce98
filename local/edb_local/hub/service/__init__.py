"""HTTPS side of the hub stand-in: service REST API, edgeHub gateway methods, /edb extensions."""
