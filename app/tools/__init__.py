"""What runs beside the service, never inside it: the ``gridwatch`` command line, the local demo, the load
generator, the benchmark with its baseline server and request profile, and the tables they print.
"""
