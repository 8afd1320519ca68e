"""Per-call helpers started by docker, kubectl and AWS SDKs.

Standard library only (no grpc, typer or rich): they start in a few
milliseconds and talk HTTP/JSON to the daemon's helper socket.
"""
