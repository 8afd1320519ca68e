"""Real and test servers the suite starts on loopback: each on a free port, stopped by PID."""
