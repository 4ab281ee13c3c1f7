"""Real components and stand-ins that the test suites start for themselves."""
