"""The device bootstrap service: which endpoints a device uses, read from its region's config table."""
