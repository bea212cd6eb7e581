"""Serving: the router, the traffic split, the HTTP endpoint and the MCP server."""
