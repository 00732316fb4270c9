"""tools/soak.py's code: common (constants), client (a client process), run (the parent:
daemon, clients, result), report (the text report), cli (the command line)."""
