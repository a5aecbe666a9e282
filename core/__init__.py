"""The shared core: config, AWS clients, errors, rate limiting, metrics, logs and Temporal wiring."""
