"""Registry replication: converging one region's AWS IoT registry to another's, and its event stream."""
