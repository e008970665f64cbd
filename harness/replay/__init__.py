"""The Locust side of harness. Only this package imports locust (which patches the standard library
with gevent on import), and only inside functions: importing harness.replay creates nothing."""
