"""The loopback webhook receiver for the notifier benchmark: tools/inbox.py with a deeper accept
queue. socketserver's default listen backlog is 5 connections; a notifier with 64 deliveries in
flight opens more than that at once, and the overflow shows up as connection resets, not as the
notifier's cost. Everything else is tools/inbox.py as `make run` starts it.

    python -m bench.receiver --dir DIR --http-port P --smtp-port Q
"""

import sys

from tools import inbox

inbox.InboxHTTPServer.request_queue_size = 1024

if __name__ == "__main__":
    sys.exit(inbox.main())
