"""The service: what runs the core as a program and shows it running.

``server`` is the daemon (workers, supervisor, drain on SIGTERM) that ``line-echo``
runs; ``stats_socket`` serves and reads the stats document; ``procview`` reads any
process's file descriptors and sockets from /proc (and sock_diag); ``fdstats`` joins
the two into what ``fd-stats`` prints; ``cli/`` holds the command-line programs. The
core (``reactor/`` outside this package) imports nothing from here.
"""
