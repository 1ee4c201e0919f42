"""ctxcost peers: external engines for the ctxcost harness, spoken to over JSON lines
(see PROTOCOL.md). ``python3 -m ctxcost_peers ADAPTER`` serves one adapter."""

__version__ = "0.1.0"
