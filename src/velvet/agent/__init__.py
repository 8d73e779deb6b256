"""The node agent: the daemon's wiring (`daemon`), its state and behaviour (`node`), the API handlers
that run that behaviour off the event loop (`handlers`), and the read-only answers (`queries`)."""
