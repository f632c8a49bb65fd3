"""One module per Flowise streaming protocol, each an async generator of normalized events.

A transport yields `start` once Flowise has accepted the prediction, then tokens and relayed
events, then `end`; it raises a `GatewayError` on failure and closes its upstream in `finally`.
"""
