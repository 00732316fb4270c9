"""reactor: a single-threaded edge-triggered epoll reactor (the public surface arrives with the loop)."""
