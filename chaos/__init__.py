"""The fault campaign: random, seeded fault schedules against the real controller, and a checker."""
