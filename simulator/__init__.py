"""The device fleet simulator: many devices in one process, each following DESIGN.md's device contract."""
